//! LoRA hyper-parameters, as PEFT's `LoraConfig` names them.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// PEFT module names smelt can adapt (Llama-family names; Phi-3's fused ones included).
pub const MODULES: [&str; 9] = ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of each update.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (`alpha / √r` with rsLoRA).
    pub alpha: f64,
    pub dropout: f32,
    /// PEFT module names (`q_proj`, `v_proj`, ...).
    pub targets: Vec<String>,
    /// Rank-stabilised scaling `alpha / √r`.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.05, targets: parse_targets("all-linear").unwrap(), rslora: false }
    }
}

impl LoraConfig {
    /// The factor applied to `B·A` for an update of rank `r` with this alpha.
    pub fn scale_for(alpha: f64, r: usize, rslora: bool) -> f64 {
        if rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    pub fn scale(&self) -> f64 {
        Self::scale_for(self.alpha, self.rank, self.rslora)
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || self.rank > 4096 {
            bail!("LoRA rank must be between 1 and 4096, got {}", self.rank);
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!("LoRA alpha must be positive, got {}", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("LoRA dropout must be in [0, 1), got {}", self.dropout);
        }
        if self.targets.is_empty() {
            bail!("no LoRA target modules");
        }
        Ok(())
    }
}

/// `q_proj,v_proj`, or the groups `all-linear`, `attention` (`attn`), `mlp`.
pub fn parse_targets(s: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let group: &[&str] = match part {
            "all-linear" | "all" => &MODULES,
            "attention" | "attn" => &["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj"],
            "mlp" => &["gate_proj", "up_proj", "gate_up_proj", "down_proj"],
            m if MODULES.contains(&m) => std::slice::from_ref(MODULES.iter().find(|x| **x == m).unwrap()),
            other => bail!("unknown LoRA target module {other:?} (known: {}, or all-linear, attention, mlp)", MODULES.join(", ")),
        };
        for m in group {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
    }
    if out.is_empty() {
        bail!("--targets names no module");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_targets() {
        assert_eq!(LoraConfig::scale_for(16.0, 4, false), 4.0);
        assert_eq!(LoraConfig::scale_for(16.0, 4, true), 8.0);
        assert_eq!(parse_targets("q_proj, v_proj,q_proj").unwrap(), ["q_proj", "v_proj"]);
        assert_eq!(parse_targets("mlp").unwrap().len(), 4);
        assert!(parse_targets("x_proj").unwrap_err().to_string().contains("x_proj"));
        assert!(LoraConfig { rank: 0, ..Default::default() }.validate().is_err());
    }
}
