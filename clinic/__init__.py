"""The clinic: patients, care teams, consent, encounters and notes, and the portal's REST API."""
