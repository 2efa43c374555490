//! Adapters as trainable variables: PEFT's initialisation (`A` Kaiming-uniform as
//! `nn.Linear`'s default, `B` zero, so training starts from the base model exactly),
//! attached to a decoder, and converted to and from [`Adapter`] files.
//!
//! Variables hold `B` in the model's row order and are named
//! `layers.N.self_attn.q_proj.lora_A` / `.lora_B`.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};

use super::adapter::{Adapter, AdapterLayer};
use super::config::LoraConfig;
use super::layer::LoraDelta;
use super::targets::{row_order, targets_mut, to_hf_rows, to_model_rows};
use crate::model::Decoder;
use crate::sample::Rng;
use crate::train::params::{Param, Params};

fn var_name(layer: usize, module: &str, which: char) -> String {
    format!("layers.{layer}.{module}.lora_{which}")
}

/// `(layer, module, in, out)` of every targeted layer, in decoder order.
fn selected(dec: &mut Decoder, cfg: &LoraConfig) -> Vec<(usize, &'static str, usize, usize)> {
    targets_mut(dec)
        .iter()
        .filter(|t| cfg.targets.iter().any(|m| m == t.short()))
        .map(|t| (t.layer, t.module, t.linear.in_features, t.linear.out_features))
        .collect()
}

/// Fresh adapters for the layers `cfg` targets.
pub fn init_params(dec: &mut Decoder, cfg: &LoraConfig, seed: u64) -> Result<Params> {
    cfg.validate()?;
    let sel = selected(dec, cfg);
    if sel.is_empty() {
        anyhow::bail!("none of the target modules {:?} exists in this model", cfg.targets);
    }
    let mut list = Vec::new();
    for (layer, module, inp, out) in sel {
        // nn.init.kaiming_uniform_(a=√5): bound = gain·√(3/fan_in) with gain = √(2/(1+5)) = 1/√fan_in.
        let bound = 1.0 / (inp as f64).sqrt();
        let name = var_name(layer, module, 'A');
        let mut rng = Rng::new(seed ^ fnv(&name));
        let a: Vec<f32> = (0..cfg.rank * inp).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let a = Tensor::from_vec(a, (cfg.rank, inp), &Device::Cpu)?;
        list.push(Param { name, var: Var::from_tensor(&a)?, decay: true });
        let b = Tensor::zeros((out, cfg.rank), candle_core::DType::F32, &Device::Cpu)?;
        list.push(Param { name: var_name(layer, module, 'B'), var: Var::from_tensor(&b)?, decay: true });
    }
    Ok(Params { cfg: dec.cfg.clone(), list })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Attach the variables to `dec`: tracked (training) or `detached` (evaluation; the
/// tensors share storage, so the evaluation decoder sees every update).
pub fn attach_params(dec: &mut Decoder, params: &Params, cfg: &LoraConfig, detached: bool) -> Result<()> {
    for t in targets_mut(dec) {
        let (Some(a), Some(b)) = (params.get(&var_name(t.layer, t.module, 'A')), params.get(&var_name(t.layer, t.module, 'B'))) else {
            continue;
        };
        let (a, b) = if detached { (a.as_tensor().detach(), b.as_tensor().detach()) } else { (a.as_tensor().clone(), b.as_tensor().clone()) };
        let r = a.dims()[0];
        t.linear.adapters.push(LoraDelta::new(a, b, LoraConfig::scale_for(cfg.alpha, r, cfg.rslora), cfg.dropout)?);
    }
    Ok(())
}

/// The variables as an adapter file's contents (Hugging Face row order).
pub fn to_adapter(dec: &Decoder, params: &Params, cfg: &LoraConfig, base_model: Option<String>) -> Result<Adapter> {
    let mut layers = Vec::new();
    for p in params.list.iter().filter(|p| p.name.ends_with(".lora_A")) {
        let stem = p.name.strip_suffix(".lora_A").unwrap();
        let rest = stem.strip_prefix("layers.").context("adapter variable name")?;
        let (layer, module) = rest.split_once('.').context("adapter variable name")?;
        let b = params.get(&format!("{stem}.lora_B")).with_context(|| format!("{stem}: no lora_B"))?;
        let a = p.var.as_tensor().copy()?;
        let r = a.dims()[0];
        layers.push(AdapterLayer {
            layer: layer.parse()?,
            module: module.to_string(),
            a,
            b: to_hf_rows(&b.as_tensor().copy()?, row_order(dec, module))?,
            scale: LoraConfig::scale_for(cfg.alpha, r, cfg.rslora),
        });
    }
    Ok(Adapter { config: cfg.clone(), base_model, layers })
}

/// An adapter file's weights as variables (resuming), checked against `dec`.
pub fn from_adapter(dec: &mut Decoder, adapter: &Adapter) -> Result<Params> {
    // Shape checks as at inference.
    adapter.deltas(&mut dec.clone(), 1.0)?;
    let mut list = Vec::new();
    for l in &adapter.layers {
        let b = to_model_rows(&l.b, row_order(dec, &l.module))?;
        list.push(Param { name: var_name(l.layer, &l.module, 'A'), var: Var::from_tensor(&l.a)?, decay: true });
        list.push(Param { name: var_name(l.layer, &l.module, 'B'), var: Var::from_tensor(&b.contiguous()?)?, decay: true });
    }
    Ok(Params { cfg: dec.cfg.clone(), list })
}
