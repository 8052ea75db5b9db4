"""Video: signalling over Channels, session resume, TURN credentials, the JS client and self-test."""
