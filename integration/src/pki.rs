//! Certificates for TLS tests: a private CA with a server and a client certificate, made by the
//! `openssl` command line (the way an operator would make them), so that tests exercise the
//! same PEM files a deployment has.

use std::path::Path;
use std::process::Command;

/// A new P-256 key, unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Runs `openssl` in `dir`; panics with its error output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server and a client certificate it signed for `127.0.0.1`, made by the
/// `openssl` command line (as an operator would) in a temporary folder.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// # Panics
    ///
    /// If `openssl` is missing or fails; the message carries its error output.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let openssl = |args: &[&str]| openssl(dir.path(), args);
        let ec = EC_KEY;
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                &["-subj", "/CN=outpost test CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
        // One extension file for both leaves: Redis uses its server certificate as a client
        // certificate too, towards the primary it replicates or monitors.
        std::fs::write(
            dir.path().join("leaf.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let pki = TestPki { dir };
        for leaf in ["server", "client"] {
            pki.sign_leaf(leaf, "leaf.ext");
        }
        pki
    }

    /// A server certificate signed by this CA for the DNS names given (wildcards allowed):
    /// `(certificate PEM, private key PEM)`. `name` names its files; a second call with the
    /// same name makes a new key and certificate (a rotation).
    pub fn issue(&self, name: &str, dns: &[&str]) -> (String, String) {
        let sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.path().join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        )
        .unwrap();
        self.sign_leaf(name, &ext);
        let read = |f: String| String::from_utf8(self.read(&f)).unwrap();
        (read(format!("{name}.pem")), read(format!("{name}.key")))
    }

    fn sign_leaf(&self, leaf: &str, ext: &str) {
        let (key, csr, pem) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.pem"),
        );
        let dir = self.dir.path();
        openssl(
            dir,
            &[
                &["req"][..],
                &EC_KEY,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN=outpost test {leaf}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(file)).unwrap()
    }

    /// `redis-server` arguments serving TLS on `tls_port` with this PKI's server certificate.
    /// `auth_clients`: `yes` (mutual TLS), `optional` or `no`.
    pub fn redis_server_args(&self, tls_port: u16, auth_clients: &str) -> Vec<String> {
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.path("server.pem"),
            "--tls-key-file",
            &self.path("server.key"),
            "--tls-ca-cert-file",
            &self.path("ca.pem"),
            "--tls-auth-clients",
            auth_clients,
        ]
        .map(String::from)
        .to_vec()
    }
}
