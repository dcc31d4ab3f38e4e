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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn;
use rewardsds::engine::models::unet_2d::{
    DownBlockType, PerBlock, UNet2DConditionModel, UNet2DConditionModelConfig, UpBlockType,
    num_params_lazy,
};
use rewardsds::engine::weights::{KeyPolicy, LoadOptions, load_safetensors_with, tensor_shapes};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, FloatDType, Tensor};

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "SD 2.1-base UNet forward timings and parity with PyTorch")]
struct Args {
    /// Backends to time, comma-separated (cpu, wgpu, cuda).
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
}

fn main() -> Result<()> {
    let args = Args::parse();
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
        "{} UNet, {size}x{size} latents, {} tokens, mean of {} forwards after {} warm-up",
        if args.small {
            "tiny (--small)"
        } else {
            "SD 2.1-base"
        },
        args.tokens,
        args.iters,
        args.warmup
    );
    println!();
    println!("| backend | dtype | batch | forward (ms) |");
    println!("|---|---|---|---|");
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
        let mut rows = Vec::new();
        for dtype in &args.dtypes {
            let model = if dtype == "f16" {
                // Not every backend has f16 kernels (ndarray has none): report instead of dying.
                match quiet(|| cast_module(unet.clone(), FloatDType::F16)) {
                    Ok(m) => {
                        if let Some(input) = &args.input {
                            let f16 = FloatDType::F16;
                            match quiet(|| parity::<B<AB>>(&m, input, None, f16, &device)) {
                                Ok(line) => parity_lines.push(line?),
                                Err(reason) => parity_lines.push(format!("f16 parity: {reason}")),
                            }
                        }
                        m
                    }
                    Err(reason) => {
                        rows.push(format!("| f16 | - | n/a: {reason} |"));
                        continue;
                    }
                }
            } else {
                unet.clone()
            };
            for &batch in &args.batches {
                let ms = quiet(|| {
                    time_forward::<B<AB>>(
                        &model,
                        batch,
                        size,
                        args.tokens,
                        cross,
                        dtype,
                        &args,
                        &device,
                    )
                });
                match ms {
                    Ok(ms) => rows.push(format!("| {dtype} | {batch} | {ms:.1} |")),
                    Err(reason) => rows.push(format!("| {dtype} | {batch} | failed: {reason} |")),
                }
            }
        }
        Ok(Report {
            parity: parity_lines,
            rows,
        })
    }
}

/// Mean forward time in ms at `batch`, after `args.warmup` untimed runs.
#[allow(clippy::too_many_arguments)]
fn time_forward<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    batch: usize,
    size: usize,
    tokens: usize,
    cross: usize,
    dtype: &str,
    args: &Args,
    device: &B::Device,
) -> f64 {
    let float = if dtype == "f16" {
        FloatDType::F16
    } else {
        FloatDType::F32
    };
    let normal = Distribution::Normal(0.0, 1.0);
    let sample = Tensor::<B, 4>::random([batch, 4, size, size], normal, device).cast(float);
    let context = Tensor::<B, 3>::random([batch, tokens, cross], normal, device).cast(float);
    let timesteps = Tensor::<B, 1>::full([batch], 500.0, device);
    let mut total = 0.0;
    for i in 0..args.warmup + args.iters {
        let start = Instant::now();
        let out = unet.forward(sample.clone(), timesteps.clone(), context.clone());
        B::sync(device).expect("device sync");
        drop(out);
        if i >= args.warmup {
            total += start.elapsed().as_secs_f64() * 1e3;
        }
    }
    total / args.iters.max(1) as f64
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
