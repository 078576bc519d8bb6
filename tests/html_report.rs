//! The HTML report: every number the page shows equals the JSON report's,
//! and `apply --report x.html` writes the page `report` renders.

use std::collections::HashMap;

use serde_json::Value;

mod common;
use common::{ok, s, tiny, tiny_base, Dir};

/// Every `data-…` attribute set of an element with a `data-value`.
fn tagged_values(page: &str) -> Vec<HashMap<String, String>> {
    let unescape = |v: &str| {
        v.replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    let mut out = Vec::new();
    for tag in page.split('<').filter(|t| t.contains("data-value=\"")) {
        let head = tag.split('>').next().unwrap();
        let mut attrs = HashMap::new();
        for part in head.split(" data-").skip(1) {
            let (k, rest) = part.split_once("=\"").unwrap();
            let v = rest.split('"').next().unwrap();
            attrs.insert(k.to_string(), unescape(v));
        }
        out.push(attrs);
    }
    out
}

/// The JSON value at a dotted key of the report (`summary.tensors`,
/// `budget.base_bytes`, `by_output_type.q4_K.rmse`).
fn at<'a>(report: &'a Value, key: &str) -> &'a Value {
    if let Some(rest) = key.strip_prefix("by_output_type.") {
        let (ty, k) = rest.rsplit_once('.').unwrap();
        let t = &report["summary"]["by_output_type"][ty];
        return if k == "tensors" {
            &t[k]
        } else {
            &t["error"][k]
        };
    }
    if let Some(rest) = key.strip_prefix("budget.") {
        return &report["budget"][rest];
    }
    let mut v = &report["summary"];
    for k in key.split('.') {
        v = &v[k];
    }
    v
}

/// The page's numbers equal the report's, and there are enough of them.
fn check_page(page: &str, report: &Value, stats_of: impl Fn(&Value) -> &Value) -> (usize, usize) {
    let tensors: HashMap<&str, &Value> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), stats_of(t)))
        .collect();
    let (mut per_tensor, mut keyed) = (0, 0);
    for attrs in tagged_values(page) {
        let shown: Value = serde_json::from_str(&attrs["value"]).unwrap();
        if let Some(name) = attrs.get("tensor") {
            let expected = &tensors[name.as_str()][attrs["metric"].as_str()];
            assert_eq!(&shown, expected, "{name} {}", attrs["metric"]);
            per_tensor += 1;
        } else {
            let key = &attrs["key"];
            assert_eq!(&shown, at(report, key), "{key}");
            assert!(
                !at(report, key).is_null() || key.contains("retention") || key.contains("budget"),
                "{key} is absent from the report"
            );
            keyed += 1;
        }
    }
    (per_tensor, keyed)
}

#[test]
fn apply_page_numbers_equal_the_json_report() {
    let d = Dir::new();
    let (json, html, out) = (d.p("r.json"), d.p("r.html"), d.p("out.gguf"));
    let residual = tiny("residual-f16.safetensors");
    ok(&[
        "apply",
        "--base",
        s(&tiny_base()),
        "--residual",
        s(&residual),
        "-o",
        s(&out),
        "--report",
        s(&json),
        "-q",
    ]);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(
        report["budget"].is_object(),
        "auto on --type keep plans the types"
    );
    ok(&["report", s(&json), "-o", s(&html)]);
    let page = std::fs::read_to_string(&html).unwrap();
    let (per_tensor, keyed) = check_page(&page, &report, |t| &t["error"]);
    let with_stats = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["error"].is_object())
        .count();
    // Each measured tensor is a cell of the retention and relative-RMSE maps.
    assert!(
        per_tensor >= 2 * with_stats,
        "{per_tensor} per-tensor numbers for {with_stats} tensors"
    );
    assert!(keyed >= 10, "{keyed} summary numbers");
    for needle in [
        "data-metric=\"retention\"",
        "data-metric=\"relative_rmse\"",
        "Budget plan",
        "Worst",
    ] {
        assert!(page.contains(needle), "{needle} missing");
    }
    assert!(
        !page.contains("http://")
            || page
                .matches("http://")
                .all(|_| page.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    );
    assert!(
        !page.contains("<script") && !page.contains("https://"),
        "the page loads nothing"
    );

    // apply --report x.html writes the same page directly.
    let (html2, out2) = (d.p("direct.html"), d.p("out2.gguf"));
    ok(&[
        "apply",
        "--base",
        s(&tiny_base()),
        "--residual",
        s(&residual),
        "-o",
        s(&out2),
        "--report",
        s(&html2),
        "-q",
    ]);
    assert_eq!(std::fs::read_to_string(&html2).unwrap(), page);
}

#[test]
fn compare_page_numbers_equal_the_json() {
    let d = Dir::new();
    let (json, html, out) = (d.p("c.json"), d.p("c.html"), d.p("out.gguf"));
    let residual = tiny("residual-f16.safetensors");
    ok(&[
        "apply",
        "--base",
        s(&tiny_base()),
        "--residual",
        s(&residual),
        "-o",
        s(&out),
        "-q",
    ]);
    ok(&[
        "compare",
        s(&tiny_base()),
        s(&out),
        "--json",
        s(&json),
        "--html",
        s(&html),
        "-q",
    ]);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let page = std::fs::read_to_string(&html).unwrap();
    let (per_tensor, _) = check_page(&page, &report, |t| t);
    assert!(per_tensor >= report["tensors"].as_array().unwrap().len());
    assert!(page.contains("<svg class=\"heat\" data-metric=\"relative_rmse\""));
}

#[test]
fn report_refuses_what_is_not_a_report() {
    let d = Dir::new();
    let bad = d.p("bad.json");
    std::fs::write(&bad, "{\"a\": 1}").unwrap();
    let out = common::run(&["report", s(&bad), "-o", s(&d.p("x.html"))]);
    common::assert_fails(
        &out,
        1,
        &["bad.json", "not a qresidual report"],
        &d.p("x.html"),
    );
}
