//! A LoRA adapter in PEFT's format: `adapter_config.json` and `adapter_model.safetensors`
//! with keys like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
//! (`A: (r, in)`, `B: (out, r)`, Hugging Face row order).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::config::{LoraConfig, MODULES};
use super::layer::LoraDelta;
use super::targets::{row_order, targets_mut, to_model_rows};
use crate::model::Decoder;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The update of one module of one block, in Hugging Face row order.
#[derive(Debug, Clone)]
pub struct AdapterLayer {
    pub layer: usize,
    /// `self_attn.q_proj`, `mlp.down_proj`, ...
    pub module: String,
    pub a: Tensor,
    pub b: Tensor,
    /// `B·A` is multiplied by this (`alpha / r` or `alpha / √r`).
    pub scale: f64,
}

impl AdapterLayer {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn key(&self, which: &str) -> String {
        format!("base_model.model.model.layers.{}.{}.lora_{which}.weight", self.layer, self.module)
    }
}

#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    pub base_model: Option<String>,
    pub layers: Vec<AdapterLayer>,
}

/// `DIR[:SCALE]` from the command line.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub dir: PathBuf,
    pub scale: f64,
}

impl std::str::FromStr for AdapterSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some((dir, scale)) = s.rsplit_once(':') {
            if let Ok(v) = scale.parse::<f64>() {
                if !v.is_finite() {
                    return Err(format!("LoRA scale {scale:?} is not a finite number"));
                }
                return Ok(AdapterSpec { dir: PathBuf::from(dir), scale: v });
            }
        }
        Ok(AdapterSpec { dir: PathBuf::from(s), scale: 1.0 })
    }
}

/// `(layer, module, "A"|"B")` from a PEFT key.
fn parse_key(key: &str) -> Option<(usize, String, char)> {
    let stem = key.strip_suffix(".weight")?;
    let stem = stem.strip_suffix(".default").unwrap_or(stem);
    let (path, which) = if let Some(p) = stem.strip_suffix(".lora_A") {
        (p, 'A')
    } else {
        (stem.strip_suffix(".lora_B")?, 'B')
    };
    let at = path.rfind("layers.")?;
    let (layer, module) = path[at + 7..].split_once('.')?;
    let layer = layer.parse().ok()?;
    let short = module.rsplit('.').next()?;
    if !MODULES.contains(&short) {
        return None;
    }
    Some((layer, module.to_string(), which))
}

/// PEFT's `alpha_pattern` / `rank_pattern` keys match a module path's tail.
fn pattern_match(pattern: &str, path: &str) -> bool {
    path == pattern || path.ends_with(&format!(".{pattern}"))
}

impl Adapter {
    pub fn load(dir: &Path) -> Result<Adapter> {
        let cp = dir.join(CONFIG_FILE);
        let wp = dir.join(WEIGHTS_FILE);
        if !cp.is_file() {
            bail!("{}: not a LoRA adapter folder (no {CONFIG_FILE})", dir.display());
        }
        let cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cp).with_context(|| format!("cannot read {}", cp.display()))?)
            .with_context(|| format!("{} is not valid JSON", cp.display()))?;
        let ctx = |what: &str| format!("{}: {what}", cp.display());
        if let Some(t) = cfg.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                bail!("{}", ctx(&format!("peft_type {t:?}; smelt reads LORA adapters")));
            }
        }
        if cfg.get("use_dora").and_then(Value::as_bool) == Some(true) {
            bail!("{}", ctx("DoRA adapters (use_dora) are not supported"));
        }
        if cfg.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            bail!("{}", ctx("fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported"));
        }
        if cfg.get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") {
            bail!("{}", ctx("adapters that train biases are not supported (bias must be \"none\")"));
        }
        if cfg.get("modules_to_save").is_some_and(|m| m.as_array().is_some_and(|a| !a.is_empty())) {
            bail!("{}", ctx("modules_to_save (fully trained extra modules) are not supported"));
        }
        for key in ["lora_bias", "use_qalora", "use_bdlora"] {
            if cfg.get(key).and_then(Value::as_bool) == Some(true) {
                bail!("{}", ctx(&format!("{key} adapters are not supported")));
            }
        }
        for key in ["trainable_token_indices", "layer_replication", "target_parameters"] {
            if cfg.get(key).is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) && v.as_object().is_none_or(|o| !o.is_empty())) {
                bail!("{}", ctx(&format!("{key} is not supported")));
            }
        }
        let rank = cfg.get("r").and_then(Value::as_u64).with_context(|| ctx("no rank \"r\""))? as usize;
        let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).with_context(|| ctx("no \"lora_alpha\""))?;
        let rslora = cfg.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let dropout = cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
        let alpha_pattern: BTreeMap<String, f64> = cfg
            .get("alpha_pattern")
            .and_then(Value::as_object)
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
            .unwrap_or_default();
        let targets = match cfg.get("target_modules") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        if !wp.is_file() {
            bail!("{}: no {WEIGHTS_FILE} (smelt reads safetensors adapters, not adapter_model.bin)", dir.display());
        }
        let tensors = candle_core::safetensors::load(&wp, &Device::Cpu).with_context(|| format!("cannot read {}", wp.display()))?;
        let mut parts: BTreeMap<(usize, String), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, t) in tensors {
            let Some((layer, module, which)) = parse_key(&key) else {
                bail!("{}: tensor {key:?} is not a LoRA A/B weight of a supported module", wp.display());
            };
            let t = t.to_dtype(DType::F32)?;
            let e = parts.entry((layer, module)).or_default();
            if which == 'A' { e.0 = Some(t) } else { e.1 = Some(t) }
        }
        if parts.is_empty() {
            bail!("{}: no LoRA weights", wp.display());
        }
        let mut layers = Vec::new();
        for ((layer, module), (a, b)) in parts {
            let path = format!("layers.{layer}.{module}");
            let (Some(a), Some(b)) = (a, b) else { bail!("{}: {path} has lora_A or lora_B but not both", wp.display()) };
            let (r, _) = a.dims2().with_context(|| format!("{}: {path}.lora_A is not a matrix", wp.display()))?;
            let (_, rb) = b.dims2().with_context(|| format!("{}: {path}.lora_B is not a matrix", wp.display()))?;
            if r != rb || r == 0 {
                bail!("{}: {path}: lora_A has rank {r} but lora_B {rb}", wp.display());
            }
            let alpha = alpha_pattern.iter().filter(|(p, _)| pattern_match(p, &path)).max_by_key(|(p, _)| p.len()).map_or(alpha, |(_, &v)| v);
            layers.push(AdapterLayer { layer, module, a, b, scale: LoraConfig::scale_for(alpha, r, rslora) });
        }
        let config = LoraConfig { rank, alpha, dropout, targets, rslora };
        let base_model = cfg.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string);
        Ok(Adapter { config, base_model, layers })
    }

    /// Write both files (each atomically) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let c = &self.config;
        // Layers whose rank or alpha differ from the config's (an adapter loaded with
        // patterns) keep them through PEFT's rank_pattern / alpha_pattern.
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        for l in &self.layers {
            let r = l.rank();
            let alpha = l.scale * if c.rslora { (r as f64).sqrt() } else { r as f64 };
            let path = format!("layers.{}.{}", l.layer, l.module);
            if r != c.rank {
                rank_pattern.insert(path.clone(), json!(r));
            }
            if (alpha - c.alpha).abs() > 1e-9 * c.alpha.abs().max(1.0) {
                alpha_pattern.insert(path, json!(alpha));
            }
        }
        let cfg = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": c.targets,
            "use_rslora": c.rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "use_dora": false,
        });
        let mut tensors = Vec::new();
        for l in &self.layers {
            tensors.push((l.key("A"), l.a.contiguous()?));
            tensors.push((l.key("B"), l.b.contiguous()?));
        }
        let bytes = crate::export::safetensors::to_bytes(&tensors, &[("format", "pt")])?;
        crate::util::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        crate::util::write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        Ok(())
    }

    /// Check every update against `dec`'s layers and turn it into the model's row order:
    /// `(target index in targets_mut order, delta)`.
    fn deltas_for(&self, dec: &mut Decoder, user_scale: f64) -> Result<Vec<(usize, LoraDelta)>> {
        let orders: Vec<_> = {
            let names: Vec<String> = targets_mut(dec).iter().map(|t| t.module.to_string()).collect();
            names.iter().map(|m| row_order(dec, m)).collect()
        };
        let targets = targets_mut(dec);
        let mut out = Vec::new();
        for l in &self.layers {
            let path = format!("layers.{}.{}", l.layer, l.module);
            let Some(i) = targets.iter().position(|t| t.layer == l.layer && t.module == l.module) else {
                bail!("the adapter changes {path}, which this model does not have (was it made for another base model?)");
            };
            let lin = &targets[i].linear;
            let (r, a_in) = l.a.dims2()?;
            let (b_out, _) = l.b.dims2()?;
            if a_in != lin.in_features || b_out != lin.out_features {
                bail!(
                    "the adapter's {path} maps {a_in} → {b_out} features (rank {r}) but this model's layer is {} → {}: the adapter was made for another base model",
                    lin.in_features,
                    lin.out_features
                );
            }
            let b = to_model_rows(&l.b, orders[i])?;
            out.push((i, LoraDelta::new(l.a.clone(), b, l.scale * user_scale, 0.0)?));
        }
        Ok(out)
    }

    /// Add the updates to `dec`'s layers (inference), scaled by `user_scale`.
    pub fn attach(&self, dec: &mut Decoder, user_scale: f64) -> Result<()> {
        let deltas = self.deltas_for(dec, user_scale)?;
        let mut targets = targets_mut(dec);
        for (i, d) in deltas {
            targets[i].linear.adapters.push(d);
        }
        Ok(())
    }

    /// Dense `(layer, module, ΔW)` in the model's row order (merging).
    pub fn deltas(&self, dec: &mut Decoder, user_scale: f64) -> Result<Vec<(usize, String, Tensor)>> {
        let deltas = self.deltas_for(dec, user_scale)?;
        let targets = targets_mut(dec);
        deltas.into_iter().map(|(i, d)| Ok((targets[i].layer, targets[i].module.to_string(), d.delta_weight()?))).collect()
    }
}

/// Load `specs` and attach them all to `dec`.
pub fn attach_all(dec: &mut Decoder, specs: &[AdapterSpec]) -> Result<()> {
    for s in specs {
        let a = Adapter::load(&s.dir)?;
        a.attach(dec, s.scale).with_context(|| format!("LoRA adapter {}", s.dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_specs() {
        assert_eq!(parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"), Some((3, "self_attn.q_proj".into(), 'A')));
        assert_eq!(parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"), Some((0, "mlp.down_proj".into(), 'B')));
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(parse_key("base_model.model.model.layers.0.mlp.down_proj.weight"), None);
        let s: AdapterSpec = "out/ad:0.5".parse().unwrap();
        assert_eq!((s.dir, s.scale), (PathBuf::from("out/ad"), 0.5));
        let s: AdapterSpec = "C:dir".parse().unwrap();
        assert_eq!((s.dir, s.scale), (PathBuf::from("C:dir"), 1.0));
        assert!(pattern_match("q_proj", "layers.0.self_attn.q_proj"));
        assert!(!pattern_match("q_proj", "layers.0.self_attn.qq_proj"));
    }
}
