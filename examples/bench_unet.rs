//! Times the SD 2.1-base UNet forward (batch 2 and 8, f32 and f16) and checks parity with
//! PyTorch on the same weights; prints Markdown tables.
//!
//! Random weights, timing only:
//!   `cargo run --release --features cuda --example bench_unet -- --backend cuda`
//! Same weights and inputs as PyTorch (files from `tools/gpu/unet_reference.py --out DIR`):
//!   `bench_unet --backend cuda --weights DIR/unet/diffusion_pytorch_model.safetensors
//!    --input DIR/inputs.safetensors --output DIR/out_burn.safetensors`
//! `--small` swaps in a tiny config with the same structure (the script's `--small` too), so
//! the whole path can be checked on a CPU in seconds.
//!
//! The Tiny World UNet on the CPU, forward and forward+backward, both convolution paths:
//!   `cargo run --release --example bench_unet -- --tiny-world --tokens 16 --dtypes f32
//!    --backward --conv im2col,backend`

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn;
use rewardsds::engine::models::conv::{ConvAlgorithm, set_conv_algorithm};
use rewardsds::engine::models::unet_2d::{
    DownBlockType, PerBlock, UNet2DConditionModel, UNet2DConditionModelConfig, UpBlockType,
    num_params_lazy,
};
use rewardsds::engine::weights::{KeyPolicy, LoadOptions, load_safetensors_with, tensor_shapes};

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, FloatDType, Tensor};

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "SD 2.1-base UNet forward timings and parity with PyTorch")]
struct Args {
    /// Backends to time, comma-separated (cpu, wgpu, cuda, flex).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Tiny config of the same structure (what `unet_reference.py --small` builds).
    #[arg(long)]
    small: bool,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,8")]
    batches: Vec<usize>,
    /// Float types to time, comma-separated (f32, f16).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16")]
    dtypes: Vec<String>,
    /// Text tokens per sample.
    #[arg(long, default_value_t = 77)]
    tokens: usize,
    /// Timed iterations after the warm-up.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Warm-up iterations (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Diffusers UNet weights (`diffusion_pytorch_model.safetensors`); its folder's
    /// `config.json` is used when present. Random weights otherwise.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Inputs for a parity run (`sample`, `timesteps`, `encoder_hidden_states`, optionally
    /// `reference_out`), as written by `tools/gpu/unet_reference.py`.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write burn's f32 output on `--input` (safetensors, tensor `out`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// The shipped Tiny World UNet (`assets/models/tiny-world/unet`), instead of `--weights`.
    #[arg(long)]
    tiny_world: bool,
    /// Also time forward + backward (gradients of every parameter and of the sample).
    #[arg(long)]
    backward: bool,
    /// Convolution paths to time, comma-separated: auto, im2col, backend (see
    /// `models::conv::ConvAlgorithm`).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    conv: Vec<String>,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.tiny_world {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/tiny-world/unet");
        args.weights = Some(root.join("diffusion_pytorch_model.safetensors"));
    }
    for conv in &args.conv {
        conv_algorithm(conv)?;
    }
    for dtype in &args.dtypes {
        if dtype != "f32" && dtype != "f16" {
            bail!("unknown --dtypes entry '{dtype}': expected f32 or f16");
        }
    }
    let config = model_config(&args)?;
    let mut rows = Vec::new();
    for name in args.backend.split(',') {
        let kind: BackendKind = name.parse()?;
        let report = run_on(
            kind,
            Bench {
                args: args.clone(),
                config: config.clone(),
            },
        )??;
        for line in report.parity {
            println!("{kind}: {line}");
        }
        rows.extend(report.rows.into_iter().map(|r| format!("| {kind} {r}")));
    }
    let size = config.sample_size.unwrap_or(64);
    println!();
    println!(
        "{} UNet, {size}x{size} samples, {} tokens, mean of {} runs after {} warm-up",
        if args.tiny_world {
            "Tiny World"
        } else if args.small {
            "tiny (--small)"
        } else if args.weights.is_some() {
            "loaded"
        } else {
            "SD 2.1-base"
        },
        args.tokens,
        args.iters,
        args.warmup
    );
    println!();
    println!("| backend | conv | dtype | batch | forward (ms) | forward+backward (ms) |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// The config next to `--weights`, else the preset (or its tiny twin with `--small`).
fn model_config(args: &Args) -> Result<UNet2DConditionModelConfig> {
    if let Some(weights) = &args.weights {
        let file = weights.with_file_name("config.json");
        if file.exists() {
            return Ok(UNet2DConditionModelConfig::from_file(&file)?);
        }
    }
    let base = UNet2DConditionModelConfig::sd21_base();
    Ok(if args.small {
        UNet2DConditionModelConfig {
            sample_size: Some(16),
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            up_block_types: vec![UpBlockType::UpBlock2D, UpBlockType::CrossAttnUpBlock2D],
            block_out_channels: vec![32, 64],
            layers_per_block: PerBlock::One(1),
            norm_num_groups: 8,
            cross_attention_dim: PerBlock::One(32),
            attention_head_dim: PerBlock::Many(vec![2, 4]),
            ..base
        }
    } else {
        base
    })
}

struct Bench {
    args: Args,
    config: UNet2DConditionModelConfig,
}

struct Report {
    parity: Vec<String>,
    rows: Vec<String>,
}

impl BackendTask for Bench {
    type Output = Result<Report>;

    fn run<AB: EngineAutodiffBackend>(self, device: AB::Device) -> Result<Report> {
        // Inference only: the inner backend, without autodiff bookkeeping.
        type B<AB> = <AB as AutodiffBackend>::InnerBackend;
        let Bench { args, config } = self;
        let mut unet: UNet2DConditionModel<B<AB>> = config.init(&device);
        eprintln!("UNet: {} parameters", num_params_lazy::<B<AB>, _>(&unet));
        if let Some(weights) = &args.weights {
            let start = Instant::now();
            let (loaded, report) = unet.load_weights(std::slice::from_ref(weights), &device)?;
            unet = loaded;
            eprintln!(
                "loaded {} tensors from {} in {:.1} s",
                report.applied,
                weights.display(),
                start.elapsed().as_secs_f64()
            );
        }

        let mut parity_lines = Vec::new();
        if let Some(input) = &args.input {
            let output = args.output.as_deref();
            parity_lines.push(parity::<B<AB>>(
                &unet,
                input,
                output,
                FloatDType::F32,
                &device,
            )?);
        }

        let size = config.sample_size.unwrap_or(64);
        let cross = config.cross_attention_dim.get(0);
        let channels = config.in_channels;
        let mut rows = Vec::new();
        for conv in &args.conv {
            set_conv_algorithm(conv_algorithm(conv)?);
            for dtype in &args.dtypes {
                let model = if dtype == "f16" {
                    // Not every backend has f16 kernels (ndarray has none): report instead of dying.
                    match quiet(|| cast_module(unet.clone(), FloatDType::F16)) {
                        Ok(m) => {
                            if let Some(input) = &args.input {
                                let f16 = FloatDType::F16;
                                match quiet(|| parity::<B<AB>>(&m, input, None, f16, &device)) {
                                    Ok(line) => parity_lines.push(line?),
                                    Err(reason) => {
                                        parity_lines.push(format!("f16 parity: {reason}"))
                                    }
                                }
                            }
                            m
                        }
                        Err(reason) => {
                            rows.push(format!("| {conv} | f16 | - | n/a: {reason} | |"));
                            continue;
                        }
                    }
                } else {
                    unet.clone()
                };
                let shape = Shape {
                    channels,
                    size,
                    tokens: args.tokens,
                    cross,
                };
                for &batch in &args.batches {
                    let forward = quiet(|| {
                        time_forward::<B<AB>>(&model, batch, shape, dtype, &args, &device)
                    });
                    // Gradients in f32 only: the CPU backend has no f16.
                    let backward = (args.backward && dtype == "f32").then(|| {
                        let model =
                            trainable(UNet2DConditionModel::<AB>::from_inner(model.clone()));
                        quiet(|| time_forward_backward::<AB>(&model, batch, shape, &args, &device))
                    });
                    let cell = |r: std::result::Result<f64, String>| match r {
                        Ok(ms) => format!("{ms:.1}"),
                        Err(reason) => format!("failed: {reason}"),
                    };
                    let backward = backward.map(cell).unwrap_or_else(|| "-".into());
                    rows.push(format!(
                        "| {conv} | {dtype} | {batch} | {} | {backward} |",
                        cell(forward)
                    ));
                }
            }
        }
        set_conv_algorithm(ConvAlgorithm::Auto);
        Ok(Report {
            parity: parity_lines,
            rows,
        })
    }
}

/// Input sizes of a timing run.
#[derive(Debug, Clone, Copy)]
struct Shape {
    channels: usize,
    size: usize,
    tokens: usize,
    cross: usize,
}

/// Random `(sample, timesteps, context)` for one batch.
fn inputs<B: Backend>(
    batch: usize,
    shape: Shape,
    float: FloatDType,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>) {
    let normal = Distribution::Normal(0.0, 1.0);
    let Shape {
        channels,
        size,
        tokens,
        cross,
    } = shape;
    let sample = Tensor::<B, 4>::random([batch, channels, size, size], normal, device).cast(float);
    let context = Tensor::<B, 3>::random([batch, tokens, cross], normal, device).cast(float);
    let timesteps = Tensor::<B, 1>::full([batch], 500.0, device);
    (sample, timesteps, context)
}

/// Mean forward time in ms at `batch`, after `args.warmup` untimed runs.
fn time_forward<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    batch: usize,
    shape: Shape,
    dtype: &str,
    args: &Args,
    device: &B::Device,
) -> f64 {
    let float = if dtype == "f16" {
        FloatDType::F16
    } else {
        FloatDType::F32
    };
    let (sample, timesteps, context) = inputs::<B>(batch, shape, float, device);
    mean_ms(args.warmup, args.iters, || {
        let out = unet.forward(sample.clone(), timesteps.clone(), context.clone());
        B::sync(device).expect("device sync");
        drop(out);
    })
}

/// Mean time in ms of a forward and the backward of `sum(output)` into every parameter and
/// the sample (f32).
fn time_forward_backward<B: AutodiffBackend>(
    unet: &UNet2DConditionModel<B>,
    batch: usize,
    shape: Shape,
    args: &Args,
    device: &B::Device,
) -> f64 {
    let (sample, timesteps, context) = inputs::<B>(batch, shape, FloatDType::F32, device);
    let sample = sample.require_grad();
    mean_ms(args.warmup, args.iters, || {
        let out = unet.forward(sample.clone(), timesteps.clone(), context.clone());
        let grads = out.sum().backward();
        let grad = sample.grad(&grads).expect("the sample has a gradient");
        let weight_grad = (unet.conv_in.weight.grad(&grads)).expect("parameters have gradients");
        B::InnerBackend::sync(device).expect("device sync");
        drop((grad, weight_grad));
    })
}

/// `--conv` entry to algorithm.
fn conv_algorithm(name: &str) -> Result<ConvAlgorithm> {
    ConvAlgorithm::from_name(name)
        .with_context(|| format!("unknown --conv entry '{name}': expected auto, im2col or backend"))
}

/// Runs `f`, turning a panic (e.g. an unsupported dtype) into its message.
fn quiet<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// Every float parameter cast to `dtype`.
fn cast_module<B: Backend>(
    unet: UNet2DConditionModel<B>,
    dtype: FloatDType,
) -> UNet2DConditionModel<B> {
    struct Cast(FloatDType);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    let unet = unet.map(&mut Cast(dtype));
    // Materialise now so the cast is not charged to the first timed forward.
    let _ = num_params_lazy::<B, _>(&unet);
    unet
}

/// Every parameter tracked by autodiff (loaded weights come in untracked).
fn trainable<B: AutodiffBackend>(unet: UNet2DConditionModel<B>) -> UNet2DConditionModel<B> {
    struct RequireGrad;
    impl<B: AutodiffBackend> ModuleMapper<B> for RequireGrad {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| t.set_require_grad(true))
        }
    }
    unet.map(&mut RequireGrad)
}

/// The parity inputs, read through the engine's loader: a module whose parameters are the
/// tensors of the file.
#[derive(Module, Debug)]
struct ParityInputs<B: Backend> {
    sample: Param<Tensor<B, 4>>,
    timesteps: Param<Tensor<B, 1>>,
    encoder_hidden_states: Param<Tensor<B, 3>>,
    reference_out: Option<Param<Tensor<B, 4>>>,
    reference_out_fp16: Option<Param<Tensor<B, 4>>>,
}

/// Runs the forward in `dtype` on `input`'s tensors, writes it to `output`, and compares it
/// with the file's PyTorch output of the same precision (`reference_out` for f32,
/// `reference_out_fp16` for f16) when present.
fn parity<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    input: &Path,
    output: Option<&Path>,
    dtype: FloatDType,
    device: &B::Device,
) -> Result<String> {
    let shapes = tensor_shapes(input)?;
    let shape = |name: &str| {
        shapes
            .get(name)
            .with_context(|| format!("{}: no tensor `{name}`", input.display()))
    };
    let zeros = |name: &str| -> Result<Param<Tensor<B, 4>>> {
        let s: [usize; 4] = shape(name)?
            .as_slice()
            .try_into()
            .with_context(|| format!("`{name}` is not 4-D"))?;
        Ok(Param::from_tensor(Tensor::zeros(s, device)))
    };
    let optional = |name: &str| shapes.contains_key(name).then(|| zeros(name)).transpose();
    let t: [usize; 1] = shape("timesteps")?
        .as_slice()
        .try_into()
        .context("`timesteps` is not 1-D")?;
    let e: [usize; 3] = shape("encoder_hidden_states")?
        .as_slice()
        .try_into()
        .context("`encoder_hidden_states` is not 3-D")?;
    let inputs = ParityInputs {
        sample: zeros("sample")?,
        timesteps: Param::from_tensor(Tensor::zeros(t, device)),
        encoder_hidden_states: Param::from_tensor(Tensor::zeros(e, device)),
        reference_out: optional("reference_out")?,
        reference_out_fp16: optional("reference_out_fp16")?,
    };
    let options = LoadOptions::default().with_unexpected(KeyPolicy::Allow);
    let (inputs, _) = load_safetensors_with(inputs, &[input.to_path_buf()], device, &options)?;

    let out = unet
        .forward(
            inputs.sample.val().cast(dtype),
            inputs.timesteps.val(),
            inputs.encoder_hidden_states.val().cast(dtype),
        )
        .cast(FloatDType::F32);
    let dims = out.dims();
    if let Some(path) = output {
        let values: Vec<f32> = out
            .clone()
            .into_data()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("reading the output: {e:?}"))?;
        write_safetensors(path, "out", &dims, &values)?;
    }
    let (label, reference) = match dtype {
        FloatDType::F16 => ("f16", inputs.reference_out_fp16),
        _ => ("f32", inputs.reference_out),
    };
    let mut line = format!("{label} forward on {} (batch {})", input.display(), dims[0]);
    if let Some(reference) = reference {
        let reference = reference.val();
        let scale: f32 = reference.clone().abs().max().into_scalar().elem();
        let err: f32 = (out - reference).abs().max().into_scalar().elem();
        line += &format!(": max abs error vs PyTorch {label} {err:.3e} (max |out| {scale:.3})");
    }
    Ok(line)
}

use burn::tensor::ElementConversion as _;

#[path = "common/timing.rs"]
mod timing;
use timing::mean_ms;

/// A one-tensor safetensors file (8-byte header length, JSON header, little-endian f32 data),
/// written by hand: the root package has no safetensors writer and this is the whole format.
fn write_safetensors(path: &Path, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes = data.len() * 4;
    let mut header =
        format!(r#"{{"{name}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[0,{bytes}]}}}}"#);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = Vec::with_capacity(8 + header.len() + bytes);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    for v in data {
        file.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, file).with_context(|| format!("writing {}", path.display()))
}
