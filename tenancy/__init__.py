"""Tenancy: organizations, memberships, sign-in and the tenant context enforced by PostgreSQL.

The bottom of the dependency graph: clinic, audit and video import tenancy; tenancy imports none of them.
"""
