//! Prometheus' data model and text format, for every part that reports metrics (the mounts,
//! the snapshotter): building families of counters and gauges, and encoding them as
//! Prometheus scrapes them. Nothing here knows what is measured.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

pub fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

/// A family of one type; `metrics` gives each sample's labels and value.
pub fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

pub fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

pub fn counters(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    family(name, help, MetricType::COUNTER, metrics)
}

pub fn gauges(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    family(name, help, MetricType::GAUGE, metrics)
}

/// The text format Prometheus scrapes (`text/plain; version=0.0.4`). Families without
/// samples are left out.
pub fn encode(families: Vec<MetricFamily>) -> String {
    let families: Vec<MetricFamily> = families
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("metric families encode");
    String::from_utf8(out).expect("text format is UTF-8")
}
