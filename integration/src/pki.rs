//! Certificates for TLS tests: a private CA with a server and a client certificate, made by the
//! `openssl` command line (the way an operator would make them), so that tests exercise the
//! same PEM files a deployment has.

use std::process::Command;

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
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
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
        for leaf in ["server", "client"] {
            let (key, csr, pem) = (
                format!("{leaf}.key"),
                format!("{leaf}.csr"),
                format!("{leaf}.pem"),
            );
            openssl(
                &[
                    &["req"][..],
                    &ec,
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
            openssl(&[
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
                "leaf.ext",
            ]);
        }
        TestPki { dir }
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
