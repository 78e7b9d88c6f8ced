#!/usr/bin/env python3
"""Prints the SCRAM-SHA-256 verifier of the password read from standard input, as PostgreSQL
stores it (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), so that a role's
password can be set without the password itself ever being on a command line or in a statement
the server may log: `ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'` stores the verifier as given.
This is what psql's \\password does before it sends the statement. (RFC 5802, RFC 7677.)

    printf %s "$PASSWORD" | scripts/scram-verifier.py
"""
import base64
import hashlib
import hmac
import os
import sys
import unicodedata

ITERATIONS = 4096


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    # SASLprep reduces to NFKC for the passwords this tool makes; PostgreSQL falls back to the
    # raw bytes when a password cannot be prepared, so NFKC is what both sides compute here.
    normalized = unicodedata.normalize("NFKC", password).encode()
    salted = hashlib.pbkdf2_hmac("sha256", normalized, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def main() -> None:
    password = sys.stdin.read()
    if not password:
        sys.exit("scram-verifier: no password on standard input")
    print(verifier(password, os.urandom(16)))


if __name__ == "__main__":
    main()
