//! `qresidual report R.json -o R.html`: a JSON report as an HTML page.

use std::path::PathBuf;

use crate::{report, Error, Result};

/// Render a JSON report (apply, compare, adapter) as one self-contained HTML page.
#[derive(clap::Args, Debug)]
#[command(long_about = "\
Render a JSON report written by apply (--report R.json), compare (--json R.json) or an adapter \
apply as one self-contained HTML page: the summary, heat maps of retention and relative error \
per layer × tensor class, the per-type aggregates, the worst tensors and the budget plan. The \
page loads nothing from the network (inline SVG and CSS, no script).

Example:
  qresidual report report.json -o report.html")]
pub struct ReportArgs {
    /// The JSON report.
    #[arg(value_name = "REPORT.json")]
    pub input: PathBuf,
    /// The HTML page to write.
    #[arg(short, long, value_name = "REPORT.html")]
    pub output: PathBuf,
}

/// Run `report`.
pub fn run(a: &ReportArgs) -> Result<super::Done> {
    let text = std::fs::read_to_string(&a.input).map_err(|e| Error::io(&a.input, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&a.input, format!("not JSON: {e}")))?;
    if !value["command"].is_string() || !value["tensors"].is_array() {
        return Err(Error::format(
            &a.input,
            "not a qresidual report (no \"command\" and \"tensors\"; apply --report, compare --json write one)",
        ));
    }
    crate::format::output::check_output(&a.output, std::slice::from_ref(&a.input))?;
    crate::format::output::write_atomic(&a.output, report::html::to_html(&value).as_bytes())?;
    Ok(super::Done {
        stdout: String::new(),
        outputs: vec![a.output.clone()],
    })
}
