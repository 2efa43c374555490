//! The run's record: `metrics.jsonl` (one JSON object per line — training loss, learning
//! rate, gradient norm and throughput every `log_every` steps; held-out loss and perplexity
//! at each evaluation) and `loss.svg`, the loss curve drawn from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::util::write_atomic;

pub struct MetricsLog {
    path: PathBuf,
    svg: PathBuf,
    /// (step, training loss)
    pub train: Vec<(u64, f64)>,
    /// (step, held-out loss)
    pub val: Vec<(u64, f64)>,
}

impl MetricsLog {
    /// A new log in `out` (replacing any old one), or — when resuming at `resume_step` — the
    /// existing one cut back to the records up to that step, as if the run had never gone further.
    pub fn open(out: &Path, resume_step: Option<u64>) -> Result<MetricsLog> {
        let path = out.join("metrics.jsonl");
        let mut log = MetricsLog { svg: out.join("loss.svg"), path, train: Vec::new(), val: Vec::new() };
        let mut kept = String::new();
        if let (Some(step), true) = (resume_step, log.path.is_file()) {
            let text = std::fs::read_to_string(&log.path).with_context(|| format!("cannot read {}", log.path.display()))?;
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
                if v["step"].as_u64().is_some_and(|s| s <= step) {
                    log.remember(&v);
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        write_atomic(&log.path, kept.as_bytes())?;
        Ok(log)
    }

    fn remember(&mut self, v: &Value) {
        let Some(step) = v["step"].as_u64() else { return };
        if let Some(l) = v["loss"].as_f64() {
            self.train.push((step, l));
        }
        if let Some(l) = v["val_loss"].as_f64() {
            self.val.push((step, l));
        }
    }

    pub fn append(&mut self, v: Value) -> Result<()> {
        self.remember(&v);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(f, "{v}").with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }

    /// Redraw `loss.svg`.
    pub fn write_svg(&self, title: &str) -> Result<()> {
        write_atomic(&self.svg, loss_svg(&self.train, &self.val, title).as_bytes())
    }

    pub fn svg_path(&self) -> &Path {
        &self.svg
    }
}

fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = range / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    mag * if n < 1.5 {
        1.0
    } else if n < 3.0 {
        2.0
    } else if n < 7.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1000.0 && v.fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A line chart of training loss (raw, and an exponential moving average) and held-out loss
/// against the step, as a self-contained SVG.
pub fn loss_svg(train: &[(u64, f64)], val: &[(u64, f64)], title: &str) -> String {
    let (w, h) = (760.0, 440.0);
    let (l, r, t, b) = (64.0, 24.0, 40.0, 48.0);
    let finite = |p: &&(u64, f64)| p.1.is_finite();
    let all: Vec<&(u64, f64)> = train.iter().chain(val).filter(finite).collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    if all.is_empty() {
        s.push_str("<text x=\"380\" y=\"220\" text-anchor=\"middle\">no data yet</text>\n</svg>\n");
        return s;
    }
    let x_max = all.iter().map(|p| p.0).max().unwrap().max(1) as f64;
    let y_lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y_hi - y_lo) * 0.05).max(0.05);
    let (y_lo, y_hi) = ((y_lo - pad).max(0.0), y_hi + pad);
    let px = |x: f64| l + (w - l - r) * x / x_max;
    let py = |y: f64| t + (h - t - b) * (1.0 - (y - y_lo) / (y_hi - y_lo));
    // Grid and ticks.
    let ys = nice_step(y_hi - y_lo, 6.0);
    let mut y = (y_lo / ys).ceil() * ys;
    while y <= y_hi {
        s += &format!(
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#e5e5e5\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            w - r,
            l - 6.0,
            py(y) + 4.0,
            fmt_tick(y),
            py = py(y)
        );
        y += ys;
    }
    let xs = nice_step(x_max, 8.0).max(1.0);
    let mut x = 0.0;
    while x <= x_max {
        s += &format!(
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{t}\" y2=\"{}\" stroke=\"#e5e5e5\"/><text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            h - b,
            h - b + 16.0,
            fmt_tick(x),
            px = px(x)
        );
        x += xs;
    }
    s += &format!(
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">loss (nats/token)</text>\n",
        w - l - r,
        h - t - b,
        (l + w - r) / 2.0,
        h - 10.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    let line = |pts: &[(u64, f64)], color: &str, width: f64| -> String {
        let p: Vec<String> = pts.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", px(x as f64), py(y))).collect();
        format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" points=\"{}\"/>\n", p.join(" "))
    };
    s += &line(train, "#9ecae1", 1.0);
    let mut ema = Vec::with_capacity(train.len());
    let mut acc = None;
    for &(x, y) in train.iter().filter(|p| p.1.is_finite()) {
        let a: f64 = acc.map_or(y, |a: f64| 0.9 * a + 0.1 * y);
        acc = Some(a);
        ema.push((x, a));
    }
    s += &line(&ema, "#1f77b4", 2.0);
    s += &line(val, "#ff7f0e", 2.0);
    for &(x, y) in val.iter().filter(|p| p.1.is_finite()) {
        s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#ff7f0e\"/>\n", px(x as f64), py(y));
    }
    let lx = w - r - 190.0;
    s += &format!(
        "<rect x=\"{lx}\" y=\"{}\" width=\"180\" height=\"54\" fill=\"white\" stroke=\"#ccc\"/>\n<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">training (moving average)</text>\n<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#ff7f0e\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">held-out</text>\n",
        t + 8.0,
        lx + 8.0, lx + 32.0, t + 24.0, t + 24.0, lx + 40.0, t + 28.0,
        lx + 8.0, lx + 32.0, t + 46.0, t + 46.0, lx + 40.0, t + 50.0,
    );
    if let Some(&(step, v)) = val.last() {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#ff7f0e\">held-out {v:.3} (ppl {:.1}) at step {step}</text>\n",
            w - r - 8.0,
            t + 80.0,
            v.exp()
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_both_curves() {
        let train: Vec<(u64, f64)> = (0..50).map(|i| (i * 10, 8.0 - i as f64 * 0.1)).collect();
        let val = vec![(100, 6.5), (200, 5.2), (490, 3.3)];
        let s = loss_svg(&train, &val, "run <a>");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert_eq!(s.matches("<circle").count(), 3);
        assert!(s.contains("run &lt;a&gt;"));
        assert!(s.contains("held-out 3.300"));
        assert!(loss_svg(&[], &[], "x").contains("no data"));
    }

    #[test]
    fn resume_cuts_the_log() {
        let dir = std::env::temp_dir().join(format!("smelt-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = MetricsLog::open(&dir, None).unwrap();
        for s in [10, 20, 30] {
            m.append(serde_json::json!({"step": s, "loss": 1.0})).unwrap();
        }
        m.append(serde_json::json!({"step": 20, "val_loss": 2.0})).unwrap();
        let m = MetricsLog::open(&dir, Some(20)).unwrap();
        assert_eq!(m.train, [(10, 1.0), (20, 1.0)]);
        assert_eq!(m.val, [(20, 2.0)]);
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
