//! smelt's quantized kernels through the public API: weights quantized by candle (realistic
//! scales), real tensors from the test models, zero-copy loading, the Tensor entry point.
//!
//! Tolerances are the guaranteed bounds of `smelt::kernels::testing` (activation
//! quantization error `Σ|w_i|·d_i/2` plus f32 rounding), see that module.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use smelt::kernels::quant::ActFormat;
use smelt::kernels::testing::*;
use smelt::kernels::{Isa, QWeight};
use smelt::load::gguf::{GgmlType, GgufFile};
use smelt::load::gguf_config::config_from_gguf;
use smelt::load::tensors::{candle_dtype, GgufTensors, TensorSource};
use smelt::model::linear::Weight;
use smelt::model::Decoder;
use smelt::sample::Rng;

fn test_data() -> PathBuf {
    let dir = std::env::var_os("SMELT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/smelt-test"));
    assert!(dir.join("models").is_dir(), "test data missing in {}: run scripts/fetch-test-data.sh first", dir.display());
    dir
}

/// `w · x` for `m` rows of `x` with every ISA, each output checked against the f64 product
/// of the dequantized weight (`wf`, `(n, k)`) within the activation-quantization bound.
fn check_product(w: &QWeight, wf: &[f32], x: &[f32], m: usize, what: &str) {
    let (n, k) = (w.rows(), w.cols());
    let format = ActFormat::for_weight(w.dtype()).unwrap();
    let nb = k / w.dtype().block_size();
    for isa in Isa::available() {
        let mut y = vec![f32::NAN; m * n];
        w.matmul_with(isa, x, m, &mut y).unwrap();
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            for j in 0..n {
                let wr = &wf[j * k..(j + 1) * k];
                let want = dot_f64(wr, xr);
                let tol = act_quant_bound(format, wr, &offsets(w.dtype(), w.row(j)), xr, nb);
                let got = y[i * n + j] as f64;
                assert!((got - want).abs() <= tol, "{what} {isa:?} [{i},{j}]: {got} vs f32 {want} (bound {tol:e})");
            }
        }
    }
}

#[test]
fn candle_quantized_weights_multiply_within_activation_error() {
    let mut rng = Rng::new(11);
    for t in TYPES {
        for (m, n, nb) in [(1, 7, 1), (3, 33, 3), (17, 1, 2), (5, 70, 8)] {
            let k = nb * t.block_size();
            let wf: Vec<f32> = (0..n * k).map(|_| rng.next_normal() as f32 * 0.02).collect();
            let q = QTensor::quantize(&Tensor::from_vec(wf, (n, k), &Device::Cpu).unwrap(), candle_dtype(t).unwrap()).unwrap();
            let w = QWeight::from_vec(q.data().unwrap().into_owned(), t, n, k).unwrap();
            let deq = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(w.to_f32(), deq, "{t}: smelt and candle dequantize differently");
            let x = random_acts(&mut rng, m * k);
            check_product(&w, &deq, &x, m, &format!("{t} m={m} n={n} k={k}"));
        }
    }
}

/// One tensor of each type the test models use, by name.
const REAL: [(&str, &str, GgmlType); 6] = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "blk.0.ffn_down.weight", GgmlType::Q4_1),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "token_embd.weight", GgmlType::Q8_0),
    ("gemma-3-270m-q4_k_m.gguf", "blk.0.attn_q.weight", GgmlType::Q5_0),
    ("gemma-3-270m-q4_k_m.gguf", "blk.0.attn_output.weight", GgmlType::Q4_K),
    ("gemma-3-270m-q4_k_m.gguf", "token_embd.weight", GgmlType::Q8_0),
    ("gemma-3-270m-q4_k_m.gguf", "", GgmlType::Q6_K), // first Q6_K tensor, whatever its name
];

#[test]
fn real_model_tensors_match_candle_and_f32() {
    let mut rng = Rng::new(12);
    for (file, name, t) in REAL {
        let f = Arc::new(GgufFile::open(&test_data().join("models").join(file)).unwrap());
        let info = f.tensors.iter().find(|i| if name.is_empty() { i.dtype == t } else { i.name == name }).unwrap();
        assert_eq!(info.dtype, t, "{file} {name}: unexpected type");
        let src = GgufTensors::new(f.clone(), Device::Cpu);
        let Some(Weight::Quant(w)) = src.get(&info.name).unwrap() else { panic!("{} did not load as a QWeight", info.name) };
        // Zero-copy: the blocks are the file's own bytes.
        assert_eq!(w.data().as_ptr(), f.tensor_data(info).as_ptr(), "{}: weight was copied", info.name);

        // At most 64 rows (the 262144-row Gemma table would need 670 MB as f32).
        let n = w.rows().min(64);
        let k = w.cols();
        let sub = QWeight::new(f.bytes().clone(), f.data_offset + info.offset, t, n, k).unwrap();
        let bytes = &f.tensor_data(info)[..n * sub.row_bytes()];
        let deq = qtensor_from_ggml(candle_dtype(t).unwrap(), bytes, vec![n, k], &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(sub.to_f32(), deq, "{}: dequantized rows differ from candle", info.name);
        let mut last = vec![0f32; k];
        w.dequantize_row(w.rows() - 1, &mut last);
        assert!(last.iter().all(|v| v.is_finite()) && last.iter().any(|&v| v != 0.0), "{}: last row", info.name);

        let x = random_acts(&mut rng, 3 * k);
        check_product(&sub, &deq, &x, 3, &info.name);
    }
}

#[test]
fn tensor_forward_and_tied_embeddings() {
    let f = Arc::new(GgufFile::open(&test_data().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap());
    let src = GgufTensors::new(f.clone(), Device::Cpu);
    let cfg = config_from_gguf(&f, &src).unwrap();
    let dec = Decoder::load(&cfg, &src, 64, &Device::Cpu).unwrap();
    // SmolLM2 ties its output head to the token embedding: one copy, the file's.
    let Weight::Quant(table) = dec.embed.weight() else { panic!("embedding is not a QWeight") };
    let head = dec.lm_head.quant_weight().expect("head is not a QWeight");
    assert_eq!(head.data().as_ptr(), table.data().as_ptr(), "the tied head copied the table");

    // Embedding rows are the dequantized table rows.
    let ids = Tensor::new(&[[5u32, 49151, 0]], &Device::Cpu).unwrap();
    let e = dec.embed.forward(&ids).unwrap();
    assert_eq!(e.dims(), [1, 3, cfg.hidden]);
    let mut row = vec![0f32; cfg.hidden];
    table.dequantize_row(49151, &mut row);
    assert_eq!(e.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap(), row);
    assert!(dec.embed.forward(&Tensor::new(&[[49152u32]], &Device::Cpu).unwrap()).is_err());

    // forward on a (b, s, k) tensor equals the slice API, and shapes follow.
    let w = match src.get("blk.0.ffn_up.weight").unwrap() {
        Some(Weight::Quant(w)) => w,
        other => panic!("ffn_up loaded as {other:?}"),
    };
    let mut rng = Rng::new(13);
    let x = random_acts(&mut rng, 2 * 3 * w.cols());
    let y = w.forward(&Tensor::from_vec(x.clone(), (2, 3, w.cols()), &Device::Cpu).unwrap()).unwrap();
    assert_eq!(y.dims(), [2, 3, w.rows()]);
    let mut want = vec![0f32; 6 * w.rows()];
    w.matmul_into(&x, 6, &mut want).unwrap();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    // A non-contiguous input is made contiguous first.
    let xt = Tensor::from_vec(x, (w.cols(), 6), &Device::Cpu).unwrap().t().unwrap();
    assert_eq!(w.forward(&xt).unwrap().dims(), [6, w.rows()]);
    assert!(w.forward(&Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap()).is_err());
}

/// Products running at once on many threads, and nested inside rayon tasks (where a
/// worker waiting on its own product may pick up another), give the same results as one
/// at a time: the per-thread activation scratch is never shared.
#[test]
fn concurrent_and_nested_products_agree() {
    use rayon::prelude::*;
    let mut rng = Rng::new(14);
    let (t, n, k) = (GgmlType::Q4_1, 300, 512);
    let w = QWeight::from_vec(random_blocks(&mut rng, t, n, k, 0.1), t, n, k).unwrap();
    let inputs: Vec<(usize, Vec<f32>)> = [1, 5, 64, 1, 33, 8, 2, 17].iter().map(|&m| (m, random_acts(&mut rng, m * k))).collect();
    let want: Vec<Vec<f32>> = inputs
        .iter()
        .map(|(m, x)| {
            let mut y = vec![0f32; m * n];
            w.matmul_into(x, *m, &mut y).unwrap();
            y
        })
        .collect();
    for _ in 0..4 {
        let got: Vec<Vec<f32>> = inputs
            .par_iter()
            .map(|(m, x)| {
                let mut y = vec![0f32; m * n];
                w.matmul_into(x, *m, &mut y).unwrap();
                y
            })
            .collect();
        assert_eq!(got, want);
    }
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (w, inputs, want) = (w.clone(), inputs.clone(), want.clone());
            std::thread::spawn(move || {
                for ((m, x), want) in inputs.iter().zip(&want) {
                    let mut y = vec![0f32; m * n];
                    w.matmul_into(x, *m, &mut y).unwrap();
                    assert_eq!(&y, want);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
