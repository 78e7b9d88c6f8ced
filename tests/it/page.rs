//! The follower's page (`/` of `unreserver follow --listen`): a follower releases, its page
//! shows the numbers, and Debian's headless Chromium renders the page's chart (its screenshot,
//! decoded, has the chart's bars and delay points inside the chart's frame). Without Chromium
//! (`scripts/test.sh` installs Debian's `chromium`) the screenshot part says so and is skipped.

use std::process::Command;

use unreserver::telemetry::page::{
    CHART_BACKGROUND, CHART_HEIGHT, CHART_WIDTH, DELAY_COLOUR, UNITS_COLOUR,
};

use crate::app::TestApp;
use crate::common::until_true;
use crate::common::Res;
use crate::prometheus::get;

/// The text of the element with `id` in `html` (the page writes each number so).
fn by_id<'a>(html: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\">");
    let start = html.find(&marker).map(|i| i + marker.len()).expect(id);
    let end = html[start..].find('<').map(|i| start + i).expect(id);
    &html[start..end]
}

/// `#rrggbb` as bytes.
fn rgb(colour: &str) -> [u8; 3] {
    let hex = |i: usize| u8::from_str_radix(&colour[i..i + 2], 16).unwrap();
    [hex(1), hex(3), hex(5)]
}

/// A decoded screenshot: width, height and RGB pixels, row by row.
struct Screenshot {
    width: usize,
    height: usize,
    pixels: Vec<[u8; 3]>,
}

impl Screenshot {
    fn read(path: &std::path::Path) -> Screenshot {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        let channels = info.color_type.samples();
        assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
        assert!(channels >= 3, "{info:?}");
        let pixels = buffer[..info.buffer_size()]
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Screenshot {
            width: info.width as usize,
            height: info.height as usize,
            pixels,
        }
    }

    /// The smallest box (x0, y0, x1, y1, inclusive) around the pixels of `colour`.
    fn bounds(&self, colour: [u8; 3]) -> Option<(usize, usize, usize, usize)> {
        let mut found: Option<(usize, usize, usize, usize)> = None;
        for (i, pixel) in self.pixels.iter().enumerate() {
            if *pixel == colour {
                let (x, y) = (i % self.width, i / self.width);
                found = Some(match found {
                    None => (x, y, x, y),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
                });
            }
        }
        found
    }

    /// How many pixels of `colour` lie inside `(x0, y0, x1, y1)`.
    fn count_in(&self, colour: [u8; 3], (x0, y0, x1, y1): (usize, usize, usize, usize)) -> usize {
        (y0..=y1.min(self.height - 1))
            .flat_map(|y| (x0..=x1).map(move |x| (x, y)))
            .filter(|(x, y)| self.pixels[y * self.width + x] == colour)
            .count()
    }
}

/// Debian's Chromium, or None (said on stderr) when it is not installed.
fn chromium() -> Option<&'static str> {
    let found = Command::new("chromium").arg("--version").output();
    match found {
        Ok(out) if out.status.success() => Some("chromium"),
        _ => {
            eprintln!(
                "skipped: chromium cannot run: install Debian's 'chromium' package \
                 (scripts/test.sh does)"
            );
            None
        }
    }
}

/// `url` rendered by headless Chromium, as a PNG in `dir`.
fn screenshot(chromium: &str, url: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("page.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1000,1000",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            &format!("--screenshot={}", file.display()),
            url,
        ])
        .output()
        .expect("chromium ran a moment ago");
    assert!(
        out.status.success() && file.exists(),
        "chromium: {out:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

#[tokio::test]
async fn the_followers_page_shows_its_numbers_and_chromium_renders_its_chart() {
    let t = TestApp::spawn().await;
    let listen = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().to_string()
    };
    let v = t.variant(6).await;
    for _ in 0..3 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 2, "-1 minute"))
            .await;
    }
    let child = t.front().start_cli(&["follow", "--listen", &listen]);
    assert!(
        until_true(
            &t,
            "NOT EXISTS (SELECT 1 FROM orders_inventoryreservation WHERE status = 'active')"
        )
        .await,
        "the follower released nothing"
    );
    // The release committed; the follower records its pass right after: the page shows it
    // within a few looks.
    let mut page = String::new();
    for _ in 0..500 {
        let (code, body) = get(&listen, "/").await;
        assert_eq!(code, 200, "{body}");
        page = body;
        if by_id(&page, "units-hour") == "6" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let dir = std::env::temp_dir().join(format!("unreserver-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shot = chromium().map(|c| screenshot(c, &format!("http://{listen}/"), &dir));
    child.terminate();
    let out = child.wait().await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    assert_eq!(by_id(&page, "units-hour"), "6", "{page}");
    assert_eq!(by_id(&page, "reservations-hour"), "3", "{page}");
    assert_eq!(by_id(&page, "failed-hour"), "0", "{page}");
    assert!(by_id(&page, "passes-hour").parse::<u64>().unwrap() >= 1);
    assert_eq!(by_id(&page, "backlog"), "0", "{page}");
    assert_eq!(by_id(&page, "oldest-due"), "none", "{page}");
    let delay = by_id(&page, "delay-max-hour");
    let seconds: f64 = delay.trim_end_matches(" s").parse().expect(delay);
    assert!((0.0..3600.0).contains(&seconds) && seconds > 0.0, "{delay}");
    assert!(page.contains("<td>drained</td>"), "{page}");
    assert!(page.contains("<svg id=\"chart\""), "{page}");
    assert!(!page.contains("<script"), "{page}");

    let Some(shot) = shot else {
        return;
    };
    let image = Screenshot::read(&shot);
    let frame = image
        .bounds(rgb(CHART_BACKGROUND))
        .expect("no chart frame in the screenshot");
    let (x0, y0, x1, y1) = frame;
    assert_eq!(
        (x1 - x0 + 1, y1 - y0 + 1),
        (CHART_WIDTH as usize, CHART_HEIGHT as usize),
        "the chart's frame is not the chart's size: {frame:?}"
    );
    // One minute's bar of 6 units on an axis up to 10, and one delay point of 7 by 7.
    let bars = image.count_in(rgb(UNITS_COLOUR), frame);
    let points = image.count_in(rgb(DELAY_COLOUR), frame);
    assert!(bars >= 500, "{bars} pixels of the units' bars in {frame:?}");
    assert!(
        points >= 40,
        "{points} pixels of the delay's point in {frame:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
