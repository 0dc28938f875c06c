//! `outpost probe URL`: an HTTP health check that needs nothing else in the image.
//!
//! Container images built `FROM scratch` (compose/build-images.sh) have no curl, wget or shell;
//! Docker's `HEALTHCHECK CMD ["outpost", "probe", "http://127.0.0.1:8090/readyz"]` runs the
//! binary that is already there. Exit status 0 on a 2xx answer, 1 on anything else (another
//! status, a refused connection, a timeout): Docker reads 0 as healthy and 1 as unhealthy.

use std::io::Read as _;
use std::time::Duration;

/// How much of the answer is printed: Docker keeps the first 4 KiB of a check's output (see
/// `docker inspect --format '{{json .State.Health}}'`), enough for `/readyz`'s detail.
const SHOWN_BYTES: u64 = 2048;

/// One GET of `url` within `timeout`; `Ok` on a 2xx status. Redirects are not followed (the
/// status a probe sees is the endpoint's own) and proxy variables are ignored (a probe asks
/// this container, not the network's proxy).
pub fn probe(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("probe: {}", crate::client::error_chain(&e)))?;
    let res = client
        .get(url)
        .send()
        .map_err(|e| format!("{url}: {}", crate::client::error_chain(&e)))?;
    let status = res.status();
    let mut shown = Vec::new();
    // A body cut short by the timeout still leaves the status to judge by.
    let _ = res.take(SHOWN_BYTES).read_to_end(&mut shown);
    let body = String::from_utf8_lossy(&shown).into_owned();
    if status.is_success() {
        Ok((status.as_u16(), body))
    } else {
        Err(format!("{url}: HTTP {status}\n{body}"))
    }
}

/// The CLI command: prints the status and the start of the body.
pub fn run(url: &str, timeout: Duration) -> Result<(), String> {
    let (status, body) = probe(url, timeout)?;
    println!("HTTP {status}");
    if !body.is_empty() {
        println!("{body}");
    }
    Ok(())
}
