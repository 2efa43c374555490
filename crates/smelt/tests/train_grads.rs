//! The training path's gradients: against transformers + torch on a tiny Llama (fixture from
//! scripts/fixtures/gen_train_grads.py), including one clipped AdamW step, and against
//! finite differences of the loss (no reference implementation involved).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use smelt::load::hf_config::config_from_hf;
use smelt::load::tensors::SafetensorsTensors;
use smelt::sample::Rng;
use smelt::train::config::OptimConfig;
use smelt::train::optim::AdamW;
use smelt::train::step::{batch_loss, loss_and_grads, loss_and_grads_with, optimizer_step};
use smelt::train::Params;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/tiny-llama")
}

struct Fixture {
    params: Params,
    expected: HashMap<String, Tensor>,
    windows: Vec<Vec<u32>>,
}

fn fixture() -> Fixture {
    let dir = fixture_dir();
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = config_from_hf(&cfg_json).unwrap();
    let st = SafetensorsTensors::open(&[dir.join("model.safetensors")], cfg.arch, Device::Cpu).unwrap();
    let params = Params::from_source(&cfg, &st, &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<Vec<i64>> = expected["ids"].to_vec2().unwrap();
    let windows = ids.iter().map(|w| w.iter().map(|&t| t as u32).collect()).collect();
    Fixture { params, expected, windows }
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| / max(|b|, floor)
fn rel_diff(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn logits_and_loss_match_transformers() {
    let f = fixture();
    let dec = f.params.decoder(32).unwrap();
    let mut seqs: Vec<smelt::model::SeqInput> =
        f.windows.iter().map(|w| smelt::model::SeqInput { tokens: &w[..16], cache: None }).collect();
    let logits = dec.forward(&mut seqs, smelt::model::Logits::All).unwrap();
    let d = rel_diff(&vec(&logits), &vec(&f.expected["logits"]), 1.0);
    assert!(d < 1e-5, "logits differ from transformers by {d}");
    let loss = batch_loss(&dec, &f.windows).unwrap().to_scalar::<f32>().unwrap();
    let want = f.expected["loss"].to_scalar::<f32>().unwrap();
    assert!((loss - want).abs() < 1e-5, "loss {loss} vs transformers {want}");
}

#[test]
fn gradients_match_torch() {
    let f = fixture();
    let dec = f.params.decoder(32).unwrap();
    let (_, grads) = loss_and_grads(&dec, &f.params, &f.windows).unwrap();
    for (p, g) in f.params.list.iter().zip(&grads) {
        let want = &f.expected[&format!("grad.{}", p.name)];
        let d = rel_diff(&vec(g), &vec(want), 1e-3);
        assert!(d < 1e-4, "{}: gradient differs from torch by {d} (relative to its largest entry)", p.name);
    }
}

#[test]
fn clipped_adamw_step_matches_torch() {
    let f = fixture();
    let dec = f.params.decoder(32).unwrap();
    let ocfg = OptimConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, ..Default::default() };
    let mut opt = AdamW::new(&f.params, &ocfg);
    let stats = optimizer_step(&dec, &f.params, &mut opt, std::slice::from_ref(&f.windows), 1e-2, 0.1, 1.0, false).unwrap();
    let want_norm = f.expected["grad_norm"].to_scalar::<f32>().unwrap() as f64;
    assert!((stats.grad_norm - want_norm).abs() < 1e-4 * want_norm, "grad norm {} vs torch {want_norm}", stats.grad_norm);
    // The clip factor torch applied to every gradient.
    let clip = (1.0 / (want_norm + 1e-6)).min(1.0) as f32;
    for p in &f.params.list {
        let got = vec(p.var.as_tensor());
        let want = vec(&f.expected[&format!("after.{}", p.name)]);
        let grad = vec(&f.expected[&format!("grad.{}", p.name)]);
        let (mut d, mut tiny, mut n_tiny) = (0f32, 0f32, 0usize);
        for ((a, b), g) in got.iter().zip(&want).zip(&grad) {
            // A first Adam step moves a weight by lr · g / (|g| + eps): about ±lr, except
            // where |g| is within a few hundred eps, where that ratio hangs on the last bits
            // of g (float summation order) — there only the size of the step is checked.
            if (g * clip).abs() > 1e-6 {
                d = d.max((a - b).abs());
            } else {
                tiny = tiny.max((a - b).abs());
                n_tiny += 1;
            }
        }
        // One Adam step moves each weight by about lr = 1e-2; agree to 1% of that.
        assert!(d < 1e-4, "{}: weights after one AdamW step differ from torch by {d}", p.name);
        assert!(tiny <= 2.0 * 1e-2 * 1.01, "{}: a near-zero-gradient weight moved {tiny}", p.name);
        assert!(n_tiny * 100 <= grad.len().max(100), "{}: {n_tiny} of {} gradients near zero", p.name, grad.len());
    }
}

/// For each tensor, the derivative of the loss along a random direction in that tensor:
/// autograd's `g · u` against the central difference `(L(θ + εu) − L(θ − εu)) / 2ε`.
#[test]
fn gradients_match_finite_differences() {
    let f = fixture();
    let dec = f.params.decoder(32).unwrap();
    let (_, grads) = loss_and_grads(&dec, &f.params, &f.windows).unwrap();
    let eval = f.params.eval_decoder(32).unwrap();
    let loss = |d: &smelt::model::Decoder| batch_loss(d, &f.windows).unwrap().to_scalar::<f32>().unwrap() as f64;
    let mut rng = Rng::new(7);
    let eps = 1e-2f64;
    for (p, g) in f.params.list.iter().zip(&grads) {
        let theta = vec(p.var.as_tensor());
        let u: Vec<f32> = theta.iter().map(|_| rng.next_normal() as f32).collect();
        let norm = u.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
        let u: Vec<f32> = u.iter().map(|v| v / norm).collect();
        let analytic: f64 = vec(g).iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
        let set = |k: f64| {
            let moved: Vec<f32> = theta.iter().zip(&u).map(|(t, d)| t + (k * *d as f64) as f32).collect();
            p.var.set(&Tensor::from_vec(moved, p.var.shape(), &Device::Cpu).unwrap()).unwrap();
        };
        set(eps);
        let up = loss(&eval);
        set(-eps);
        let down = loss(&eval);
        set(0.0);
        let numeric = (up - down) / (2.0 * eps);
        let gnorm = vec(g).iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!(
            (numeric - analytic).abs() < 0.01 * analytic.abs() + 2e-4 * gnorm + 5e-5,
            "{}: autograd gives {analytic:.6} along a random direction, finite differences {numeric:.6}",
            p.name
        );
    }
}

/// The bf16 output projection (`train.bf16`, on CPUs with AVX-512 BF16) against torch's
/// f32 gradients: close, within bf16's precision, and not identical (the path was taken).
#[test]
fn bf16_head_gradients_are_close_to_torch() {
    if !smelt::train::kernels::bf16::available() {
        eprintln!("no AVX-512 BF16 on this CPU: nothing to compare");
        return;
    }
    let f = fixture();
    let dec = f.params.decoder(32).unwrap();
    let (loss, grads) = loss_and_grads_with(&dec, &f.params, &f.windows, true).unwrap();
    let want = f.expected["loss"].to_scalar::<f32>().unwrap() as f64;
    assert!(loss != want && (loss - want).abs() < 1e-2 * want, "loss {loss} vs torch {want}");
    for (p, g) in f.params.list.iter().zip(&grads) {
        let d = rel_diff(&vec(g), &vec(&f.expected[&format!("grad.{}", p.name)]), 1e-3);
        assert!(d < 3e-2, "{}: bf16 gradient differs from torch by {d}", p.name);
    }
}
