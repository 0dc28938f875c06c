//! Operator commands that talk to the management API.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::ServerArgs;

pub fn apply(_server: &ServerArgs, _file: &Path, _dry_run: bool) -> Result<ExitCode, String> {
    Err("apply is not built yet".into())
}

pub fn export(_server: &ServerArgs, _output: Option<&Path>) -> Result<(), String> {
    Err("export is not built yet".into())
}

/// Checks a declarative file offline.
pub fn validate(file: &Path) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match outpost_model::document::Document::from_yaml(&text) {
        Ok(doc) => {
            println!(
                "{}: valid, {} resources",
                file.display(),
                doc.resources.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprintln!(
                "{}: {} problem(s):\n{problems}",
                file.display(),
                problems.len()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn gateway_token(
    _server: &ServerArgs,
    _gateway: &str,
    _expires: &str,
    _key: &str,
) -> Result<(), String> {
    Err("gateway-token is not built yet".into())
}

pub fn import_openapi(
    _file: &Path,
    _name: &str,
    _backend_url: Option<&str>,
    _path: Option<&str>,
    _output: Option<&Path>,
) -> Result<(), String> {
    Err("import-openapi is not built yet".into())
}
