//! The pieces of a static, self-contained HTML page, for the pages both binaries write
//! (`cls-infer --report`'s error analysis, `cls-train report`'s comparison of runs): escaping,
//! `file://` links, sortable tables, inline-SVG line charts and the page shell (a
//! Content-Security-Policy that allows no remote load and only the page's own style and script,
//! by a random nonce). `std` only.
//!
//! Everything a caller passes as text (titles, labels, cells made with [`Cell::text`] or
//! [`Cell::num`]) is escaped here; markup passed as markup ([`Cell::markup`], [`page`]'s body) is
//! the caller's to escape, with [`escape`].

use std::fmt::Write as _;
use std::path::Path;

/// `text` safe as HTML text and inside a double- or single-quoted attribute value.
///
/// ```
/// # use cls_core::html::escape;
/// assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
/// ```
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (other than tab and newline) have no business on the page;
            // NUL would be dropped or replaced by the parser.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A `file://` URL of `path` (made absolute, links resolved where it exists): every byte but
/// the unreserved characters (`A-Z a-z 0-9 - . _ ~`) and `/` percent-encoded, so the URL is
/// plain ASCII whatever the name. Escape it with [`escape`] like any attribute value.
pub fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_else(|_| "/".into()).join(path)
        }
    });
    let mut out = String::from("file://");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A column of a [`table`]: `key` names it in `#sort=KEY` (ASCII letters, digits, `_`).
#[derive(Debug, Clone)]
pub struct Column {
    pub key: String,
    pub title: String,
    pub numeric: bool,
}

impl Column {
    pub fn text(key: &str, title: &str) -> Column {
        Column { key: key.into(), title: title.into(), numeric: false }
    }
    pub fn num(key: &str, title: &str) -> Column {
        Column { key: key.into(), title: title.into(), numeric: true }
    }
}

/// A table cell: its markup and the value it sorts by.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Markup, already escaped.
    pub html: String,
    /// Sort key (`data-v`): a number for numeric columns (NaN sorts last descending), a
    /// string otherwise; `None` sorts by the cell's text.
    pub sort: Option<String>,
}

impl Cell {
    /// Plain text (escaped here).
    pub fn text(text: &str) -> Cell {
        Cell { html: escape(text), sort: None }
    }
    /// A number shown as `shown` (escaped here), sorted by `value`.
    pub fn num(value: f64, shown: String) -> Cell {
        let sort = if value.is_finite() { format!("{value}") } else { String::new() };
        Cell { html: escape(&shown), sort: Some(sort) }
    }
    /// Markup the caller escaped, sorted by the plain text `sort_by` (or the cell's text when
    /// empty).
    pub fn markup(sort_by: &str, html: String) -> Cell {
        Cell { html, sort: (!sort_by.is_empty()).then(|| sort_by.to_string()) }
    }
}

/// A table the page's script sorts by clicking a header (or opening the page at
/// `#sort=KEY` or `#sort=KEY-asc`); `id` must be a plain identifier.
pub fn table(id: &str, columns: &[Column], rows: &[Vec<Cell>]) -> String {
    let mut out = format!("<table class=\"sortable\" id=\"{}\"><thead><tr>", escape(id));
    for c in columns {
        let _ = write!(
            out,
            "<th data-key=\"{}\"{}>{}</th>",
            escape(&c.key),
            if c.numeric { " class=\"num\"" } else { "" },
            escape(&c.title)
        );
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (cell, col) in row.iter().zip(columns) {
            let class = if col.numeric { " class=\"num\"" } else { "" };
            match &cell.sort {
                Some(v) => {
                    let _ = write!(out, "<td{class} data-v=\"{}\">{}</td>", escape(v), cell.html);
                }
                None => {
                    let _ = write!(out, "<td{class}>{}</td>", cell.html);
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
    out
}

/// A series of a [`Chart`], drawn as a polyline in data coordinates.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Its colour (and dashes) as those of the series at this index: the same thing keeps its
    /// colour across charts that show only some of the things. `None`: its own index.
    pub style: Option<usize>,
}

/// A marked point, with its label as a tooltip.
#[derive(Debug, Clone, Default)]
pub struct Mark {
    pub x: f64,
    pub y: f64,
    pub label: String,
    /// Drawn in the colour of this series (index into [`Chart::series`]); `None`: the page's
    /// marker red.
    pub series: Option<usize>,
}

/// A line chart: series coloured from a fixed palette in order, optional legend.
/// `..Default::default()` leaves out the optional parts (marks, legend, explicit ticks).
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// The plot area, in pixels (axes and labels add a margin).
    pub width: f64,
    pub height: f64,
    pub series: Vec<Series>,
    pub marks: Vec<Mark>,
    pub legend: bool,
    /// Where the x axis has its ticks (and grid lines), e.g. [`integer_ticks`]; `None`: five,
    /// evenly spaced over `x_range`.
    pub x_ticks: Option<Vec<f64>>,
    /// The same for the y axis.
    pub y_ticks: Option<Vec<f64>>,
}

/// The colours of the series, in order (then again, dashed): dark enough to read on white.
pub const PALETTE: [&str; 8] = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83", "#57606a"];

/// The line of the `k`th series style: 0 solid for the first round of [`PALETTE`], then 1
/// dashed, 2 dotted, 3 long-dashed (the PNG plots follow the same rule); a fifth round is solid
/// again.
pub fn line_kind(k: usize) -> usize {
    (k / PALETTE.len()) % 4
}

/// The SVG dash pattern of [`line_kind`].
fn dashes(k: usize) -> &'static str {
    match line_kind(k) {
        0 => "",
        1 => " stroke-dasharray=\"7 3\"",
        2 => " stroke-dasharray=\"2 3\"",
        _ => " stroke-dasharray=\"14 4\"",
    }
}

/// Whole-number ticks over `lo..=hi`, at most `max` (at least 2) of them: every 1, 2, 5, 10,
/// 20, 50, ... (the smallest step that fits), at the multiples of the step (just `lo` rounded up
/// when no multiple falls inside). For axes of counts (epochs).
pub fn integer_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let (lo, hi) = (lo.ceil(), hi.floor());
    if hi < lo {
        return Vec::new();
    }
    let max = max.max(2) as f64;
    let mut step = 1.0;
    'find: for scale in [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9] {
        for m in [1.0, 2.0, 5.0] {
            step = m * scale;
            if ((hi / step).floor() - (lo / step).ceil() + 1.0) <= max {
                break 'find;
            }
        }
    }
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi {
        out.push(v);
        v += step;
    }
    if out.is_empty() {
        out.push(lo);
    }
    out
}

fn tick(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

/// An inline `<svg>` of `chart` (text escaped; no style attributes, so the page's CSP holds).
pub fn line_chart(chart: &Chart) -> String {
    let (left, top, right, bottom) = (46.0, 26.0, 12.0, 40.0);
    let legend_h = if chart.legend { 18.0 * chart.series.len() as f64 } else { 0.0 };
    let (w, h) = (chart.width, chart.height);
    let (tw, th) = (left + w + right, top + h + bottom + legend_h);
    let span = |r: (f64, f64)| if r.1 > r.0 { r.1 - r.0 } else { 1.0 };
    let x = |v: f64| left + (v - chart.x_range.0) / span(chart.x_range) * w;
    let y = |v: f64| top + h - (v - chart.y_range.0) / span(chart.y_range) * h;
    let mut out = format!(
        "<svg class=\"chart\" width=\"{tw:.0}\" height=\"{th:.0}\" viewBox=\"0 0 {tw:.0} {th:.0}\" role=\"img\" aria-label=\"{}\">\n<title>{}</title>\n",
        escape(&chart.title),
        escape(&chart.title)
    );
    let _ = writeln!(out, "<text class=\"title\" x=\"{left:.1}\" y=\"16\">{}</text>", escape(&chart.title));
    let _ = writeln!(out, "<rect class=\"frame\" x=\"{left:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{h:.1}\"/>");
    let even = |r: (f64, f64)| (0..=4).map(|k| r.0 + k as f64 / 4.0 * span(r)).collect::<Vec<f64>>();
    let inside = |r: (f64, f64), v: &f64| v.is_finite() && *v >= r.0.min(r.1) - 1e-9 && *v <= r.0.max(r.1) + 1e-9;
    let x_ticks = chart.x_ticks.clone().unwrap_or_else(|| even(chart.x_range));
    let y_ticks = chart.y_ticks.clone().unwrap_or_else(|| even(chart.y_range));
    for xv in x_ticks.iter().filter(|v| inside(chart.x_range, v)) {
        let px = x(*xv);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\"/><text class=\"tick\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + h,
            top + h + 14.0,
            tick(*xv)
        );
    }
    for yv in y_ticks.iter().filter(|v| inside(chart.y_range, v)) {
        let py = y(*yv);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + w,
            left - 4.0,
            py + 4.0,
            tick(*yv)
        );
    }
    let _ = writeln!(
        out,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        left + w / 2.0,
        top + h + 32.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        out,
        "<text class=\"axis\" x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
        top + h / 2.0,
        top + h / 2.0,
        escape(&chart.y_label)
    );
    for (k, s) in chart.series.iter().enumerate() {
        let style = s.style.unwrap_or(k);
        let (colour, dash) = (PALETTE[style % PALETTE.len()], dashes(style));
        let finite: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        let pts: Vec<String> = finite.iter().map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b))).collect();
        let _ = writeln!(
            out,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\"{dash} points=\"{}\"><title>{}</title></polyline>",
            pts.join(" "),
            escape(&s.label)
        );
        // A single point draws no line: a dot instead.
        if let [(a, b)] = finite[..] {
            let _ = writeln!(
                out,
                "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{}</title></circle>",
                x(a),
                y(b),
                escape(&s.label)
            );
        }
        if chart.legend {
            let ly = top + h + bottom + 18.0 * k as f64 + 6.0;
            let _ = writeln!(
                out,
                "<line x1=\"{left:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"{dash}/><text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                left + 24.0,
                left + 30.0,
                ly + 4.0,
                escape(&s.label)
            );
        }
    }
    for m in chart.marks.iter().filter(|m| m.x.is_finite() && m.y.is_finite()) {
        // The stylesheet colours `.mark`; a series' colour goes in attributes (no style: CSP).
        let look = match m.series {
            Some(k) => format!(
                "class=\"mark-of\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"1.5\"",
                PALETTE[chart.series.get(k).and_then(|s| s.style).unwrap_or(k) % PALETTE.len()]
            ),
            None => "class=\"mark\"".to_string(),
        };
        let _ = writeln!(
            out,
            "<circle {look} cx=\"{:.1}\" cy=\"{:.1}\" r=\"4.5\"><title>{}</title></circle>",
            x(m.x),
            y(m.y),
            escape(&m.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// 128 random bits, hex: the page's CSP nonce (unguessable to whoever named the files).
pub fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let part = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    };
    format!("{:016x}{:016x}", part(1), part(2))
}

/// The page's stylesheet.
pub const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;color:#1f2328;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .5em}h2{margin-top:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
h3{margin:.2em 0}h4{margin:.6em 0 .3em;font-size:1em}
dl.about{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0 0 1em}dl.about dt{font-weight:600}dl.about dd{margin:0;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable thead th{cursor:pointer;user-select:none}table.sortable thead th:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f9fafb}
.note{color:#57606a;max-width:60em}nav{margin:1em 0}
section.class{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:1em 0}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.thumbs{display:flex;flex-wrap:wrap;gap:.5em}
figure{margin:0;width:136px;font-size:12px;text-align:center}
figure img{display:block;margin:0 auto;border:1px solid #d0d7de;max-width:128px;max-height:128px;width:auto;height:auto}
figcaption .name{word-break:break-all}
.nothumb{display:flex;align-items:center;justify-content:center;width:128px;height:96px;background:#f6f8fa;border:1px dashed #8c959f;color:#57606a}
.lab{white-space:nowrap}.lab.missed{color:#cf222e;font-weight:600}.lab.extra{color:#9a6700;font-weight:600}
td{overflow-wrap:anywhere}
svg.chart{background:#fff}svg.chart .frame{fill:none;stroke:#8c959f}svg.chart .grid{stroke:#eaeef2}
svg.chart text{font-size:11px;fill:#57606a}svg.chart .title{font-size:12px;font-weight:600;fill:#1f2328}
svg.chart .mark{fill:#d1242f;stroke:#fff;stroke-width:1.5}
";

/// The page's script: sorting of `table.sortable` (click or Enter on a header; `#sort=KEY` or
/// `#sort=KEY-asc` in the URL on opening), then `data-js="ready"` and, once everything has
/// loaded, `data-thumbs-loaded` (thumbnails that decoded) on the root element.
pub const SCRIPT: &str = r#"
(function () {
  'use strict';
  var root = document.documentElement;
  function key(cell, numeric) {
    var v = cell.getAttribute('data-v');
    if (v === null) v = cell.textContent;
    if (!numeric) return v.toLowerCase();
    var f = parseFloat(v);
    return isNaN(f) ? -Infinity : f;
  }
  function sortBy(th, dir) {
    var row = th.parentNode, body = row.closest('table').tBodies[0];
    var idx = Array.prototype.indexOf.call(row.children, th);
    var numeric = th.classList.contains('num');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[idx], numeric), y = key(b.cells[idx], numeric);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(row.children, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  }
  document.querySelectorAll('table.sortable thead th').forEach(function (th) {
    th.tabIndex = 0;
    function go() {
      var cur = th.getAttribute('aria-sort');
      sortBy(th, cur ? (cur === 'ascending' ? -1 : 1) : (th.classList.contains('num') ? -1 : 1));
    }
    th.addEventListener('click', go);
    th.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); go(); }
    });
  });
  var m = /^#sort=([A-Za-z0-9_]+)(?:-(asc|desc))?$/.exec(location.hash);
  if (m) {
    var th = document.querySelector('table.sortable thead th[data-key="' + m[1] + '"]');
    if (th) sortBy(th, m[2] === 'asc' ? 1 : -1);
  }
  root.setAttribute('data-js', 'ready');
  window.addEventListener('load', function () {
    var ok = 0;
    document.querySelectorAll('img.thumb').forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok++; });
    root.setAttribute('data-thumbs-loaded', String(ok));
  });
})();
"#;

/// A whole page around `body` (markup, escaped by the caller): UTF-8, a Content-Security-Policy
/// that forbids every remote load, plugins, forms, `<base>` and any script or style but the
/// page's own ([`STYLE`], [`SCRIPT`], by nonce), and allows images from the page's folder
/// only.
pub fn page(title: &str, body: &str) -> String {
    let nonce = nonce();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; object-src 'none'; base-uri 'none'; form-action 'none'\">\n<meta name=\"referrer\" content=\"no-referrer\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style nonce=\"{nonce}\">{STYLE}</style>\n</head>\n<body>\n{body}\n<script nonce=\"{nonce}\">{SCRIPT}</script>\n</body>\n</html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(escape("<script>alert(1)</script>"), "&lt;script&gt;alert(1)&lt;/script&gt;");
        assert_eq!(escape("plain é 漢"), "plain é 漢");
        assert_eq!(escape("a\0b\u{1b}c\td"), "a\u{FFFD}b\u{FFFD}c\td");
    }

    #[test]
    fn file_urls_are_percent_encoded_ascii() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new("/data/<img src=x onerror=alert(1)>.jpg");
        assert_eq!(file_url(p), "file:///data/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.jpg");
        assert_eq!(file_url(Path::new("/d/a\"b&c #?%.jpg")), "file:///d/a%22b%26c%20%23%3F%25.jpg");
        let odd = std::ffi::OsStr::from_bytes(b"/d/\xff\xc3\xa9.png");
        assert_eq!(file_url(Path::new(odd)), "file:///d/%FF%C3%A9.png");
        let rel = file_url(Path::new("no/such/dir/x.png"));
        assert!(rel.starts_with("file:///") && rel.ends_with("/no/such/dir/x.png"), "{rel}");
    }

    #[test]
    fn integer_ticks_are_whole_and_few() {
        assert_eq!(integer_ticks(1.0, 2.0, 10), [1.0, 2.0]);
        assert_eq!(integer_ticks(1.0, 1.0, 10), [1.0]);
        assert_eq!(integer_ticks(0.5, 4.5, 10), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(integer_ticks(1.0, 12.0, 8), [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        assert_eq!(integer_ticks(1.0, 40.0, 8), [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]);
        assert_eq!(integer_ticks(1.0, 40.0, 6), [10.0, 20.0, 30.0, 40.0]);
        assert_eq!(integer_ticks(1.0, 3.0, 1), [2.0]);
        assert_eq!(integer_ticks(3.0, 7.0, 2), [4.0, 6.0]);
        assert_eq!(integer_ticks(11.0, 13.0, 2), [12.0]);
        assert_eq!(integer_ticks(11.0, 11.0, 2), [11.0]);
        for (lo, hi, max) in [(1.0, 1000.0, 6), (1.0, 7.0, 3), (0.0, 250.0, 10), (17.0, 9999.0, 4)] {
            let t = integer_ticks(lo, hi, max);
            assert!(!t.is_empty() && t.len() <= max, "{lo} {hi} {max}: {t:?}");
            assert!(t.iter().all(|v| v.fract() == 0.0 && *v >= lo && *v <= hi), "{t:?}");
        }
        assert!(integer_ticks(2.2, 2.8, 5).is_empty());
        assert!(integer_ticks(f64::NAN, 2.0, 5).is_empty());
    }

    #[test]
    fn line_charts_escape_and_take_explicit_ticks() {
        let hostile = "<script>alert(1)</script>";
        let series =
            |k: usize| Series { label: format!("{hostile} {k}"), points: vec![(1.0, 10.0), (2.0, 20.0)], style: None };
        let chart = Chart {
            title: hostile.into(),
            x_label: "epoch".into(),
            y_label: "mAP (%)".into(),
            x_range: (1.0, 2.0),
            y_range: (0.0, 100.0),
            width: 400.0,
            height: 200.0,
            series: (0..PALETTE.len() + 1).map(series).collect(),
            legend: true,
            x_ticks: Some(integer_ticks(1.0, 2.0, 10)),
            ..Default::default()
        };
        let svg = line_chart(&chart);
        assert!(!svg.contains("<script") && svg.contains("&lt;script&gt;alert(1)&lt;/script&gt; 8"));
        assert_eq!(svg.matches("<polyline").count(), PALETTE.len() + 1);
        // Integer ticks only on x (1 and 2), five on y.
        let ticks: Vec<&str> = svg
            .lines()
            .filter_map(|l| l.split("text-anchor=\"middle\">").nth(1))
            .filter_map(|t| t.split('<').next())
            .collect();
        assert_eq!(&ticks[..2], ["1", "2"], "{svg}");
        assert!(svg.contains(">25</text>") && svg.contains(">100</text>"));
        // The ninth series is dashed, in the first colour again; no style attribute (CSP).
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "the series and its legend line");
        // Four rounds of the palette read apart (solid, dashed, dotted, long-dashed); a fifth is solid.
        let rounds: Vec<&str> = (0..5).map(|r| dashes(r * PALETTE.len())).collect();
        assert!(rounds[0].is_empty() && rounds[4].is_empty(), "{rounds:?}");
        assert!((1..4).all(|i| !rounds[i].is_empty() && (0..i).all(|j| rounds[j] != rounds[i])), "{rounds:?}");
        assert!(!svg.contains("style="));
        // A single point gets a dot.
        let one = Chart {
            series: vec![Series { label: "x".into(), points: vec![(1.0, 5.0)], style: Some(PALETTE.len() + 2) }],
            ..chart.clone()
        };
        let svg1 = line_chart(&one);
        assert_eq!(svg1.matches("<circle class=\"point\"").count(), 1);
        // Styled as the eleventh series: the third colour, dashed.
        assert!(svg1.contains(&format!("stroke=\"{}\" stroke-width=\"1.6\" stroke-dasharray", PALETTE[2])), "{svg1}");
        assert_eq!(svg.matches("<circle").count(), 0);
        let marked = Chart {
            marks: vec![
                Mark { x: 2.0, y: 20.0, label: "<b>best</b>".into(), series: Some(1) },
                Mark { x: 1.0, y: 10.0, label: "plain".into(), series: None },
                Mark { x: f64::NAN, y: 10.0, label: "not drawn".into(), series: None },
            ],
            ..chart.clone()
        };
        let svg = line_chart(&marked);
        assert!(svg.contains(&format!("<circle class=\"mark-of\" fill=\"{}\"", PALETTE[1])));
        assert!(svg.contains("<circle class=\"mark\" cx=") && svg.contains("&lt;b&gt;best&lt;/b&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn tables_escape_and_sort_by_values() {
        let cols = [Column::text("name", "<b>name</b>"), Column::num("ap", "AP")];
        let rows = vec![
            vec![Cell::text("<img src=x onerror=alert(1)>"), Cell::num(0.5, "50.0".into())],
            vec![Cell::markup("z", "<i>z</i>".into()), Cell::num(f64::NAN, "–".into())],
        ];
        let t = table("t1", &cols, &rows);
        assert!(t.contains("&lt;b&gt;name&lt;/b&gt;") && t.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(t.contains("<td class=\"num\" data-v=\"0.5\">50.0</td>") && t.contains("data-v=\"\">–</td>"));
        assert!(t.contains("<td data-v=\"z\"><i>z</i></td>"));
        assert_eq!(t.matches("<tr>").count(), 3);
    }

    #[test]
    fn pages_carry_the_policy_and_one_nonced_script() {
        let page = page("<title>", "<p>body</p>");
        assert!(page.contains("<title>&lt;title&gt;</title>"));
        assert!(page.contains("default-src 'none'") && page.contains("base-uri 'none'"));
        let n = nonce();
        assert_eq!(n.len(), 32);
        assert_ne!(n, nonce());
        assert_eq!(page.matches("<script").count(), 1);
        let script_nonce = page.split("<script nonce=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(page.contains(&format!("script-src 'nonce-{script_nonce}'")));
        assert!(page.contains(&format!("<style nonce=\"{script_nonce}\">")));
    }
}
