//! Learning rate: linear warm-up to the peak, then a cosine decay to the floor at the last step.

use super::config::OptimConfig;

/// Learning rate for optimizer step `step` (0-based).
pub fn lr_at(c: &OptimConfig, step: u64) -> f64 {
    if step < c.warmup_steps {
        return c.lr * (step + 1) as f64 / c.warmup_steps as f64;
    }
    let span = c.steps.saturating_sub(c.warmup_steps).max(1) as f64;
    let progress = ((step - c.warmup_steps) as f64 / span).min(1.0);
    c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let c = OptimConfig { steps: 110, warmup_steps: 10, lr: 1.0, min_lr: 0.1, ..Default::default() };
        assert!((lr_at(&c, 0) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 9) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 60) - 0.55).abs() < 1e-12);
        assert!((lr_at(&c, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 500) - 0.1).abs() < 1e-12);
        let w0 = OptimConfig { warmup_steps: 0, ..c };
        assert!((lr_at(&w0, 0) - 1.0).abs() < 1e-12);
    }
}
