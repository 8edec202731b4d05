//! Order statistics over repeated measurements.

use std::time::Duration;

/// The `q`-quantile (0..=1) by the nearest-rank method; `None` when empty.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

pub fn median(xs: &[f64]) -> Option<f64> {
    quantile(xs, 0.5)
}

pub fn p95(xs: &[f64]) -> Option<f64> {
    quantile(xs, 0.95)
}

/// Durations as milliseconds, the unit every latency figure is reported in.
pub fn millis(ds: &[Duration]) -> Vec<f64> {
    ds.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// "min..max over N" for a note beside a median.
pub fn spread(xs: &[f64]) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}..{} over {}", fmt_num(lo), fmt_num(hi), xs.len())
}

/// "min..max" with `decimals` decimals.
pub fn range(xs: &[f64], decimals: usize) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.decimals$}..{hi:.decimals$}")
}

/// A number with as many decimals as its size calls for.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let xs = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&xs), Some(3.0));
        assert_eq!(p95(&xs), Some(5.0));
        assert_eq!(quantile(&xs, 0.0), Some(1.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[2.0, 1.0]), Some(1.0));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(range(&[0.91, 0.8049, 1.2], 3), "0.805..1.200");
    }
}
