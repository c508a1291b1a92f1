//! `stratafs report LOG`: what a workload read of its image, per layer, from an access log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::mount::Error;
use crate::mount::access::{Header, Record};
use crate::overlay::prefetch::State;
use crate::stack::trace::RepoDir;

#[derive(Default, Clone, Copy)]
struct Count {
    files: u64,
    bytes: u64,
}

/// Regular files and their bytes in a layer directory (whiteout markers and CVMFS catalog
/// markers are not content).
fn totals(dir: &Path) -> std::io::Result<Count> {
    let mut c = Count::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && crate::stack::whiteout::classify(name.as_bytes())
                    == crate::stack::whiteout::Marker::Entry
            {
                c.files += 1;
                c.bytes += e.metadata()?.len();
            }
        }
    }
    Ok(c)
}

/// `.layers/<xx>/<hex>/layerfs` reads as `sha256:<hex>`, a `.flat/<xx>/<hex>` root (also
/// through podmanStore's links) as `flat sha256:<hex>`; other layers by their path.
pub(crate) fn label(p: &Path) -> String {
    let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    match RepoDir::parse(&real) {
        Some(d) if d.flat => format!("flat sha256:{}", &d.hex[..12]),
        Some(d) => format!("sha256:{}", &d.hex[..12]),
        None => p.display().to_string(),
    }
}

fn pct(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1} %", a as f64 * 100.0 / b as f64)
    }
}

pub fn report(log: &Path) -> Result<String, Error> {
    let bad = |reason: String| Error::AccessLog {
        path: log.into(),
        reason,
    };
    let text = std::fs::read_to_string(log).map_err(|e| bad(e.to_string()))?;
    let mut lines = text.lines();
    let header: Header = serde_json::from_str(lines.next().ok_or_else(|| bad("empty".into()))?)
        .map_err(|e| bad(e.to_string()))?;
    let mut read: BTreeMap<u16, Count> = BTreeMap::new();
    let mut last_ms = 0f64;
    // Files the job read, by where their prefetch stood at the first read.
    let mut served: BTreeMap<Option<State>, u64> = BTreeMap::new();
    for (i, l) in lines.enumerate() {
        let r: Record = serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
        *served.entry(r.prefetch).or_default() += 1;
        let c = read.entry(r.layer).or_default();
        c.files += 1;
        c.bytes += r.bytes;
        last_ms = last_ms.max(r.first_ms);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mount {} ({} layers)",
        header.mount.display(),
        header.layers.len()
    );
    let _ = writeln!(
        out,
        "{:<40} {:>26} {:>34}",
        "LAYER", "FILES READ", "BYTES READ"
    );
    let (mut tr, mut tt) = (Count::default(), Count::default());
    for (i, layer) in header.layers.iter().enumerate() {
        // An upper dir removed since (podman run --rm): what was read from it still counts.
        let (t, gone) = match totals(layer) {
            Ok(t) => (t, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Count::default(), true),
            Err(e) => return Err(bad(format!("layer {}: {e}", layer.display()))),
        };
        let r = read.get(&(i as u16)).copied().unwrap_or_default();
        tr.files += r.files;
        tr.bytes += r.bytes;
        tt.files += t.files;
        tt.bytes += t.bytes;
        let _ = writeln!(
            out,
            "{:<40} {:>26} {:>34}",
            if gone {
                format!("{} (gone)", label(layer))
            } else {
                label(layer)
            },
            format!("{} / {} ({})", r.files, t.files, pct(r.files, t.files)),
            format!("{} / {} ({})", r.bytes, t.bytes, pct(r.bytes, t.bytes))
        );
    }
    let _ = writeln!(
        out,
        "{:<40} {:>26} {:>34}",
        "image",
        format!("{} / {} ({})", tr.files, tt.files, pct(tr.files, tt.files)),
        format!("{} / {} ({})", tr.bytes, tt.bytes, pct(tr.bytes, tt.bytes))
    );
    let _ = writeln!(
        out,
        "last first read at {:.1} s after the mount",
        last_ms / 1000.0
    );
    if let Some(p) = &header.prefetch {
        let n = |s: Option<State>| served.get(&s).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "prefetch from {}: {} of {} traced files read ahead ({} bytes){}",
            p.trace.display(),
            p.fetched,
            p.files,
            p.bytes,
            match (&p.stopped, p.done_ms) {
                (Some(why), _) => format!(", stopped: {why}"),
                (None, Some(ms)) => format!(", done {:.1} s after the mount", ms / 1000.0),
                (None, None) => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "reads served by the prefetch: {} of {} files ({}); {} were being fetched, {} not yet, {} skipped, {} not in the trace",
            n(Some(State::Fetched)),
            tr.files,
            pct(n(Some(State::Fetched)), tr.files),
            n(Some(State::Fetching)),
            n(Some(State::Pending)),
            n(Some(State::Skipped)),
            n(None)
        );
    }
    Ok(out)
}
