"""Files root writes safely: atomic replacement, own-file checks, the cycle lock."""
