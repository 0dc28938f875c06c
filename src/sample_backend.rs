//! A small echo backend for the demo and the compose setup.

pub fn run(_listen: &str) -> Result<(), String> {
    Err("the sample backend is not built yet".into())
}
