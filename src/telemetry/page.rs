//! The follower's page (`/` of `unreserver follow --listen`): one HTML document rendered on the
//! server, no script — the backlog and the oldest due reservation (from the last status read),
//! the last hour's totals, an inline SVG chart of the units released and the longest release
//! delay per minute over the last hour ([`super::history`]), and the last passes. Every value
//! written into it is HTML-escaped.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::history::{Minute, Pass};

/// The chart's size in CSS pixels.
pub const CHART_WIDTH: u32 = 720;
pub const CHART_HEIGHT: u32 = 260;
/// The chart's background, the units' bars and the delay's line and points: colours used
/// nowhere else on the page (tests/it/page.rs finds the chart by them in a screenshot).
pub const CHART_BACKGROUND: &str = "#f3f6fc";
pub const UNITS_COLOUR: &str = "#4c6ef5";
pub const DELAY_COLOUR: &str = "#e8590c";
/// How often the page reloads itself (a `<meta>` refresh: no script).
pub const REFRESH_SECONDS: u32 = 60;

/// What the page shows.
#[derive(Debug)]
pub struct PageInput<'a> {
    /// Seconds since the Unix epoch.
    pub now: f64,
    /// The follow loop runs; its last database round trip is recent.
    pub alive: bool,
    pub ready: bool,
    /// `status`'s JSON as the follower last read it (or `{"error": ...}`), if ever.
    pub status: Option<&'a serde_json::Value>,
    /// The last hour, oldest minute first.
    pub minutes: &'a [Minute],
    /// The last passes, newest first.
    pub passes: &'a [Pass],
}

/// `text` with HTML's special characters escaped, for an element's text or an attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "none".to_string(), |s| format!("{s:.1} s"))
}

/// A UTC time of day, to the second.
fn time_of_day(at: f64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(at.max(0.0) as u64);
    let stamp = humantime::format_rfc3339_seconds(time).to_string();
    stamp.get(11..19).unwrap_or(&stamp).to_string()
}

/// The smallest of 1, 2, 5 times a power of ten at least `value` (an axis's top).
fn axis_top(value: f64) -> f64 {
    let mut power = 1.0;
    // A finite bound: a delay is at most days, a count at most billions.
    for _ in 0..30 {
        for factor in [1.0, 2.0, 5.0] {
            if factor * power >= value {
                return factor * power;
            }
        }
        power *= 10.0;
    }
    power
}

/// The page.
pub fn render(input: &PageInput<'_>) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let status = input.status.filter(|s| s.get("error").is_none());
    let backlog = status
        .and_then(|s| s["due_reservations"].as_u64())
        .map_or_else(|| "unknown".to_string(), |n| n.to_string());
    let oldest = status.map_or_else(
        || "unknown".to_string(),
        |s| seconds(s["oldest_due_age_seconds"].as_f64()),
    );
    let status_error = input
        .status
        .and_then(|s| s["error"].as_str())
        .map(|e| format!("<p class=\"error\">status: {}</p>", escape(e)))
        .unwrap_or_default();
    let sum = |f: fn(&Minute) -> u64| input.minutes.iter().map(f).sum::<u64>();
    let delay_max = input
        .minutes
        .iter()
        .filter_map(|m| m.delay_max_seconds)
        .reduce(f64::max);
    let state = match (input.alive, input.ready) {
        (false, _) => "stopped",
        (true, false) => "not ready: no recent database round trip",
        (true, true) => "following",
    };
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>unreserver follower</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#212529;background:#fff}}\
         dl{{display:grid;grid-template-columns:max-content auto;gap:2px 16px}}dt{{color:#495057}}\
         dd{{margin:0;font-weight:600}}table{{border-collapse:collapse}}\
         td,th{{padding:2px 10px;text-align:right;border-bottom:1px solid #dee2e6}}\
         .error{{color:#c92a2a}}.key{{display:inline-block;width:12px;height:12px}}\
         </style></head><body>\n<h1>unreserver follower</h1>\n\
         <p>{state}; at {now} UTC (reloads every {REFRESH_SECONDS} s)</p>\n{status_error}\
         <dl>\n<dt>Backlog (due now)</dt><dd id=\"backlog\">{backlog}</dd>\n\
         <dt>Oldest due</dt><dd id=\"oldest-due\">{oldest}</dd>\n\
         <dt>Passes in the last hour</dt><dd id=\"passes-hour\">{passes}</dd>\n\
         <dt>Failed passes in the last hour</dt><dd id=\"failed-hour\">{failed}</dd>\n\
         <dt>Reservations released in the last hour</dt>\
         <dd id=\"reservations-hour\">{reservations}</dd>\n\
         <dt>Units released in the last hour</dt><dd id=\"units-hour\">{units}</dd>\n\
         <dt>Longest release delay in the last hour</dt><dd id=\"delay-max-hour\">{delay}</dd>\n\
         </dl>\n",
        state = escape(state),
        now = escape(&time_of_day(input.now)),
        backlog = escape(&backlog),
        oldest = escape(&oldest),
        passes = sum(|m| m.passes),
        failed = sum(|m| m.failed_passes),
        reservations = sum(|m| m.reservations_released),
        units = sum(|m| m.units_released),
        delay = escape(&seconds(delay_max)),
    );
    chart(&mut html, input.minutes);
    passes(&mut html, input.passes);
    html.push_str("</body></html>\n");
    html
}

/// Where the chart draws, in the SVG's pixels.
struct Plot {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    /// One minute's width.
    step: f64,
}

/// The last hour's chart: the units released per minute as bars (left axis), the longest
/// release delay per minute as a line with a point per minute that released (right axis).
fn chart(html: &mut String, minutes: &[Minute]) {
    let (w, h) = (f64::from(CHART_WIDTH), f64::from(CHART_HEIGHT));
    let (left, right, top, bottom) = (56.0, 64.0, 16.0, 28.0);
    let plot = Plot {
        left,
        top,
        width: w - left - right,
        height: h - top - bottom,
        step: (w - left - right) / minutes.len().max(1) as f64,
    };
    let units_top = axis_top(minutes.iter().map(|m| m.units_released).max().unwrap_or(0) as f64);
    let delay_top = axis_top(
        minutes
            .iter()
            .filter_map(|m| m.delay_max_seconds)
            .fold(0.0, f64::max),
    );
    let _ = writeln!(
        html,
        "<h2>Last hour</h2>\n<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         shape-rendering=\"crispEdges\" font-size=\"12\" font-family=\"sans-serif\">\
         <title>Units released and longest release delay per minute, last hour</title>\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"{CHART_BACKGROUND}\"/>"
    );
    axes(html, &plot, units_top, delay_top);
    series(html, &plot, minutes, units_top, delay_top);
    let _ = writeln!(
        html,
        "<text x=\"{left}\" y=\"{ly}\">60 min ago</text>\
         <text x=\"{mx}\" y=\"{ly}\" text-anchor=\"middle\">30 min ago</text>\
         <text x=\"{rx}\" y=\"{ly}\" text-anchor=\"end\">now</text>\n</svg>\n\
         <p><span class=\"key\" style=\"background:{UNITS_COLOUR}\"></span> units released \
         per minute (left axis) &nbsp; <span class=\"key\" style=\"background:{DELAY_COLOUR}\">\
         </span> longest release delay per minute, from due to released (right axis)</p>",
        ly = h - 8.0,
        mx = left + plot.width / 2.0,
        rx = left + plot.width,
    );
}

/// The grid, and each axis's values: units on the left, seconds on the right.
fn axes(html: &mut String, plot: &Plot, units_top: f64, delay_top: f64) {
    for i in 0..=4 {
        let y = plot.top + plot.height * f64::from(i) / 4.0;
        let share = f64::from(4 - i) / 4.0;
        let _ = writeln!(
            html,
            "<line x1=\"{x1}\" x2=\"{x2}\" y1=\"{y:.0}\" y2=\"{y:.0}\" stroke=\"#ced4da\"/>\
             <text x=\"{lx}\" y=\"{ty:.0}\" text-anchor=\"end\" fill=\"#364fc7\">{u}</text>\
             <text x=\"{rx}\" y=\"{ty:.0}\" fill=\"#a33b08\">{d} s</text>",
            x1 = plot.left,
            x2 = plot.left + plot.width,
            lx = plot.left - 6.0,
            rx = plot.left + plot.width + 6.0,
            ty = y + 4.0,
            u = escape(&format!("{}", units_top * share)),
            d = escape(&format!("{}", delay_top * share)),
        );
    }
}

/// The bars of the units released and the line and points of the longest delay.
fn series(html: &mut String, plot: &Plot, minutes: &[Minute], units_top: f64, delay_top: f64) {
    let bottom = plot.top + plot.height;
    let mut points = Vec::new();
    for (i, minute) in minutes.iter().enumerate() {
        let x = plot.left + plot.step * i as f64;
        if minute.units_released > 0 {
            let bar = plot.height * minute.units_released as f64 / units_top;
            let _ = writeln!(
                html,
                "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{bw:.0}\" height=\"{bar:.0}\" \
                 fill=\"{UNITS_COLOUR}\"><title>{units} units</title></rect>",
                y = bottom - bar,
                bw = (plot.step - 2.0).max(1.0),
                units = minute.units_released,
            );
        }
        if let Some(delay) = minute.delay_max_seconds {
            points.push((
                x + plot.step / 2.0,
                bottom - plot.height * delay / delay_top,
            ));
        }
    }
    if points.len() > 1 {
        let line: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.0},{y:.0}"))
            .collect();
        let _ = writeln!(
            html,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{DELAY_COLOUR}\" \
             stroke-width=\"2\"/>",
            line.join(" ")
        );
    }
    for (x, y) in &points {
        let _ = writeln!(
            html,
            "<rect x=\"{:.0}\" y=\"{:.0}\" width=\"7\" height=\"7\" fill=\"{DELAY_COLOUR}\"/>",
            x - 3.0,
            y - 3.0
        );
    }
}

/// The last passes, newest first.
fn passes(html: &mut String, passes: &[Pass]) {
    html.push_str(
        "<h2>Last passes</h2>\n<table id=\"passes\"><thead><tr><th>ended (UTC)</th>\
         <th>outcome</th><th>reservations</th><th>units</th><th>longest delay</th>\
         <th>backlog left</th><th>oldest due left</th><th>took</th></tr></thead><tbody>\n",
    );
    if passes.is_empty() {
        html.push_str("<tr><td colspan=\"8\">no pass yet</td></tr>\n");
    }
    for pass in passes {
        let class = if pass.failed { " class=\"error\"" } else { "" };
        let _ = writeln!(
            html,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{} ms</td></tr>",
            escape(&time_of_day(pass.ended_at)),
            escape(pass.outcome),
            pass.reservations_released,
            pass.units_released,
            escape(&seconds(pass.delay_max_seconds)),
            pass.backlog_remaining,
            escape(&seconds(pass.oldest_due_age_seconds)),
            pass.duration_ms,
        );
    }
    html.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_one_two_or_five_times_a_power_of_ten() {
        let tops: Vec<f64> = [0.0, 0.5, 1.0, 1.5, 3.0, 7.0, 61.0, 200.0, 201.0]
            .iter()
            .map(|v| axis_top(*v))
            .collect();
        assert_eq!(tops, [1.0, 1.0, 1.0, 2.0, 5.0, 10.0, 100.0, 200.0, 500.0]);
    }

    #[test]
    fn a_status_error_is_escaped() {
        let status = serde_json::json!({ "error": "<script>alert('x')</script> & more" });
        let page = render(&PageInput {
            now: 0.0,
            alive: true,
            ready: false,
            status: Some(&status),
            minutes: &[],
            passes: &[],
        });
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
        assert!(page.contains("id=\"backlog\">unknown<"), "{page}");
    }
}
