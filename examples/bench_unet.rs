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
//! The same beside PyTorch on the same weights, threads and shapes, in one table (the
//! reference venv of tools/bench/README.md; torch runs after burn, never beside it):
//!   `bench_unet --tiny-world --tokens 16 --dtypes f32 --backward --torch /tmp/ref/bin/python`

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
    /// A Python with torch and diffusers: also time PyTorch (f32, CPU) on the same weights
    /// through `tools/bench/unet_torch_cpu.py` and print its times and burn's ratio to them.
    /// Needs `--weights` or `--tiny-world` (a diffusers folder).
    #[arg(long)]
    torch: Option<PathBuf>,
    /// PyTorch's thread count with `--torch` (burn's CPU backends use one per core; set
    /// RAYON_NUM_THREADS to match when this differs from the core count).
    #[arg(long, default_value_t = 2)]
    torch_threads: usize,
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
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
        rows.extend(report.rows.into_iter().map(|mut r| {
            r.backend = kind.to_string();
            r
        }));
    }
    let torch = match &args.torch {
        Some(python) => Some(torch_times(python, &args)?),
        None => None,
    };
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
    match &torch {
        None => {
            println!("| backend | conv | dtype | batch | forward (ms) | forward+backward (ms) |");
            println!("|---|---|---|---|---|---|");
            for row in rows {
                println!("{}", row.markdown());
            }
        }
        Some(torch) => {
            println!(
                "| backend | conv | dtype | batch | forward (ms) | torch forward (ms) | ratio \
                 | forward+backward (ms) | torch forward+backward (ms) | ratio |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|");
            for row in rows {
                println!("{}", row.markdown_with(torch));
            }
            println!();
            println!(
                "torch: f32, {} threads, `tools/bench/unet_torch_cpu.py`; ratio = burn / torch",
                args.torch_threads
            );
        }
    }
    Ok(())
}

/// One measured configuration: a cell is a time in ms, or why there is none.
struct Row {
    backend: String,
    conv: String,
    dtype: String,
    batch: Option<usize>,
    forward: std::result::Result<f64, String>,
    backward: Option<std::result::Result<f64, String>>,
}

impl Row {
    fn cell(value: &std::result::Result<f64, String>) -> String {
        match value {
            Ok(ms) => format!("{ms:.1}"),
            Err(reason) => format!("failed: {reason}"),
        }
    }

    fn batch(&self) -> String {
        self.batch.map_or_else(|| "-".into(), |b| b.to_string())
    }

    fn markdown(&self) -> String {
        let backward = self
            .backward
            .as_ref()
            .map_or_else(|| "-".into(), Self::cell);
        format!(
            "| {} | {} | {} | {} | {} | {backward} |",
            self.backend,
            self.conv,
            self.dtype,
            self.batch(),
            Self::cell(&self.forward)
        )
    }

    /// With PyTorch's time for the same batch and pass beside each of burn's (f32 rows).
    fn markdown_with(&self, torch: &[TorchTime]) -> String {
        let pair = |ours: Option<&std::result::Result<f64, String>>, pass: &str| {
            let Some(ours) = ours else {
                return "- | - | -".to_string();
            };
            let theirs = torch
                .iter()
                .find(|t| Some(t.batch) == self.batch && t.pass == pass && self.dtype == "f32");
            match (ours, theirs) {
                (Ok(ms), Some(t)) => format!("{ms:.1} | {:.1} | {:.2}x", t.ms, ms / t.ms),
                (_, Some(t)) => format!("{} | {:.1} | -", Self::cell(ours), t.ms),
                (_, None) => format!("{} | - | -", Self::cell(ours)),
            }
        };
        format!(
            "| {} | {} | {} | {} | {} | {} |",
            self.backend,
            self.conv,
            self.dtype,
            self.batch(),
            pair(Some(&self.forward), "forward"),
            pair(self.backward.as_ref(), "forward+backward"),
        )
    }
}

/// One PyTorch timing from `tools/bench/unet_torch_cpu.py`.
struct TorchTime {
    batch: usize,
    pass: String,
    ms: f64,
}

/// Runs the PyTorch side on the same folder, batches, tokens and loop counts.
fn torch_times(python: &Path, args: &Args) -> Result<Vec<TorchTime>> {
    let weights = args
        .weights
        .as_deref()
        .context("--torch needs --weights or --tiny-world: PyTorch loads the same folder")?;
    let folder = weights.parent().unwrap_or(Path::new("."));
    if !folder.join("config.json").exists() {
        bail!(
            "--torch: {} has no config.json beside the weights (a diffusers UNet folder)",
            folder.display()
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench/unet_torch_cpu.py");
    let batches: Vec<String> = args.batches.iter().map(|b| b.to_string()).collect();
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .arg("--unet")
        .arg(folder)
        .args(["--batches", &batches.join(",")])
        .args(["--tokens", &args.tokens.to_string()])
        .args(["--threads", &args.torch_threads.to_string()])
        .args(["--iters", &args.iters.to_string()])
        .args(["--warmup", &args.warmup.to_string()]);
    if args.backward {
        command.arg("--backward");
    }
    eprintln!("timing PyTorch: {command:?}");
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("--torch: cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "--torch: {} {} failed ({})",
            python.display(),
            script.display(),
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("--torch: unreadable line {line}"))?;
            let time = (|| {
                Some(TorchTime {
                    batch: value.get("batch")?.as_u64()? as usize,
                    pass: value.get("pass")?.as_str()?.to_string(),
                    ms: value.get("ms")?.as_f64()?,
                })
            })();
            time.with_context(|| format!("--torch: expected batch, pass and ms in {line}"))
        })
        .collect()
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
    rows: Vec<Row>,
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
                            rows.push(Row {
                                backend: String::new(),
                                conv: conv.clone(),
                                dtype: "f16".into(),
                                batch: None,
                                forward: Err(format!("n/a: {reason}")),
                                backward: None,
                            });
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
                    class_labels: config.class_labels_width(),
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
                    rows.push(Row {
                        backend: String::new(),
                        conv: conv.clone(),
                        dtype: dtype.clone(),
                        batch: Some(batch),
                        forward,
                        backward,
                    });
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
    /// Width of the class labels a class-embedding UNet takes (e.g. Tiny World's camera).
    class_labels: Option<usize>,
}

/// Random inputs of one batch.
struct Inputs<B: Backend> {
    sample: Tensor<B, 4>,
    timesteps: Tensor<B, 1>,
    context: Tensor<B, 3>,
    class_labels: Option<Tensor<B, 2>>,
}

impl<B: Backend> Inputs<B> {
    fn random(batch: usize, shape: Shape, float: FloatDType, device: &B::Device) -> Self {
        let normal = Distribution::Normal(0.0, 1.0);
        let Shape {
            channels,
            size,
            tokens,
            cross,
            class_labels,
        } = shape;
        Self {
            sample: Tensor::<B, 4>::random([batch, channels, size, size], normal, device)
                .cast(float),
            context: Tensor::<B, 3>::random([batch, tokens, cross], normal, device).cast(float),
            timesteps: Tensor::full([batch], 500.0, device),
            class_labels: class_labels
                .map(|width| Tensor::<B, 2>::random([batch, width], normal, device).cast(float)),
        }
    }

    fn forward(&self, unet: &UNet2DConditionModel<B>, sample: Tensor<B, 4>) -> Tensor<B, 4> {
        unet.forward_with_class_labels(
            sample,
            self.timesteps.clone(),
            self.context.clone(),
            self.class_labels.clone(),
        )
    }
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
    let inputs = Inputs::<B>::random(batch, shape, float, device);
    mean_ms(args.warmup, args.iters, || {
        let out = inputs.forward(unet, inputs.sample.clone());
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
    let inputs = Inputs::<B>::random(batch, shape, FloatDType::F32, device);
    let sample = inputs.sample.clone().require_grad();
    mean_ms(args.warmup, args.iters, || {
        let out = inputs.forward(unet, sample.clone());
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
