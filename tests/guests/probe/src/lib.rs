//! The probe: a plugin whose behaviour is chosen by its `mode` configuration, so tests can
//! make an action succeed, fail, loop, exhaust memory, panic or reach outside its sandbox.
use sluice_sdk::prelude::*;
use std::path::Path;

struct Probe;

impl Action for Probe {
    fn describe() -> Description {
        Description::new("probe", "1.0.0", Category::Test)
            .summary("Test plugin: behaves as `mode` says")
            .required("mode", "ok | fail | flaky | retryable | config | pending | loop | alloc | panic | sleep | read | write | symlink | exec | spam | hardlink | context | copy | hash | effect | approval | hold | reveal")
            .optional("path", "a guest path for read/write/symlink")
            .optional("target", "symlink target")
            .optional("program", "host program for exec")
            .optional("value", "a value echoed back as the `Value` variable")
            .optional("env", "KEY=VALUE passed to the program in exec mode")
            .optional("dir", "effect mode: a granted directory where the side effect is recorded")
            .optional("pause_ms", "effect mode: how long to keep working after the side effect")
            .optional("ms", "sleep mode: how long to sleep (default an hour)")
            .optional("approvers", "approval mode: who may decide")
            .optional("timeout", "approval mode: how long the engine waits for a decision")
            .optional("subject", "hold mode: the NATS subject whose event wakes it")
            .optional("secret", "reveal mode: the secret to hold (the action must list it)")
            .reveals_secrets()
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let path = || config.require("path");
        let done = || {
            let mut o = Outcome::success();
            if let Some(v) = config.get("value") {
                o = o.var("Value", v);
            }
            o
        };
        match config.require("mode")? {
            "ok" => {
                log::info("probe ok");
                Ok(done())
            }
            "fail" => {
                log::info("probe starting");
                log::error("error: the probe was told to fail");
                Err(ActionError::Failed("the probe was told to fail".into()))
            }
            "flaky" => {
                let succeed_at: u32 = config.parse_or("value", 3)?;
                if ctx.attempt < succeed_at {
                    return Err(ActionError::Retryable(format!(
                        "attempt {} of a flaky probe",
                        ctx.attempt
                    )));
                }
                Ok(Outcome::success().var("Attempt", ctx.attempt))
            }
            "retryable" => Err(ActionError::Retryable(
                "the probe was told to fail transiently".into(),
            )),
            "config" => Err(ActionError::Config(
                "the probe rejects its configuration".into(),
            )),
            // Long-running work polled on a timer: two waits, then done; each call sees the
            // continuation the previous one returned.
            "pending" => match ctx.continuation.as_deref() {
                None => Ok(Outcome::pending("step-1", sluice_sdk::WakeOn::Timer(50))
                    .summary("step 1 of 3")),
                Some("step-1") => Ok(Outcome::pending("step-2", sluice_sdk::WakeOn::Timer(50))
                    .summary("step 2 of 3")),
                Some(other) => Ok(done().var("Resumed", other)),
            },
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the probe was told to panic"),
            "sleep" => {
                let ms = config
                    .get("ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(3_600_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(done())
            }
            "read" => {
                let p = path()?;
                match std::fs::read(p) {
                    Ok(bytes) => Ok(done().var("Bytes", bytes.len())),
                    Err(e) => Err(ActionError::Failed(format!("cannot read {p}: {e}"))),
                }
            }
            "write" => {
                let p = path()?;
                if let Some(parent) = Path::new(p).parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::write(p, config.get("value").unwrap_or("probe"))
                    .map_err(|e| ActionError::Failed(format!("cannot write {p}: {e}")))?;
                Ok(done())
            }
            "symlink" => {
                let p = path()?;
                sluice_sdk::fs::symlink(Path::new(config.require("target")?), Path::new(p))
                    .map_err(|e| ActionError::Failed(format!("cannot create symlink {p}: {e}")))?;
                Ok(done())
            }
            "exec" => {
                let program = config.require("program")?;
                let env: Vec<(&str, &str)> = config
                    .get("env")
                    .and_then(|e| e.split_once('='))
                    .into_iter()
                    .collect();
                let status = process::run_with_env(program, &["-c", "true"], &env)
                    .map_err(ActionError::Failed)?;
                Ok(done().var("Code", status.code.unwrap_or(-1)))
            }
            "spam" => {
                let line = "x".repeat(1023);
                for _ in 0..2048 {
                    println!("{line}");
                }
                Ok(done())
            }
            "hardlink" => {
                let (from, to) = (path()?, config.require("target")?);
                std::fs::hard_link(from, to)
                    .map_err(|e| ActionError::Failed(format!("cannot link {from} to {to}: {e}")))?;
                Ok(done())
            }
            "context" => Ok(done()
                .var("ExecutionId", &ctx.execution_id)
                .var("Attempt", ctx.attempt)
                .var("IdempotencyKey", &ctx.idempotency_key)
                .var("Inputs", ctx.inputs.join(","))
                .var("Outputs", ctx.outputs.join(","))),
            // A pure build step for the action cache's benchmark: hash every file of the input,
            // write `value` MiB derived from the hash as the output.
            "hash" => {
                let from = ctx.input_dir(ctx.single_input()?);
                let to = ctx.output_dir(ctx.single_output()?);
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                let mut stack = vec![from];
                while let Some(dir) = stack.pop() {
                    let mut entries: Vec<_> = std::fs::read_dir(&dir)
                        .map_err(|e| ActionError::Failed(e.to_string()))?
                        .filter_map(Result::ok)
                        .collect();
                    entries.sort_by_key(|e| e.file_name());
                    for e in entries {
                        let path = e.path();
                        if path.is_dir() {
                            stack.push(path);
                        } else {
                            let bytes = std::fs::read(&path)
                                .map_err(|e| ActionError::Failed(e.to_string()))?;
                            for b in bytes {
                                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                            }
                        }
                    }
                }
                let mib: usize = config.parse_or("value", 10)?;
                let block = hash.to_le_bytes().repeat(1 << 17);
                let mut out = std::fs::File::create(to.join("data.bin"))
                    .map_err(|e| ActionError::Failed(e.to_string()))?;
                for _ in 0..mib {
                    use std::io::Write;
                    out.write_all(&block)
                        .map_err(|e| ActionError::Failed(e.to_string()))?;
                }
                Ok(Outcome::success().var("Hash", format!("{hash:016x}")))
            }
            "copy" => {
                let from = ctx.input_dir(ctx.single_input()?);
                let to = ctx.output_dir(ctx.single_output()?);
                let n = sluice_sdk::fs::copy_tree(&from, &to, &[]).map_err(ActionError::Failed)?;
                Ok(done().var("Files", n))
            }
            // A deploy-like side effect, done once per idempotency key: a redelivered job (same
            // key) finds its marker and does not repeat it. Then it keeps "working" a while.
            "effect" => {
                let dir = Path::new(config.require("dir")?);
                let marker = dir.join(format!("done-{}", ctx.idempotency_key.replace('/', "_")));
                // The key claimed atomically, as a target that deduplicates by idempotency key
                // does: of two runs of one attempt (a redelivery while the first still runs),
                // one makes the effect. The marker names the key (effects.log, appended by
                // concurrent runs through WASI's emulated append, may interleave).
                let repeated = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&marker)
                {
                    Ok(mut file) => {
                        use std::io::Write;
                        file.write_all(ctx.idempotency_key.as_bytes())
                            .map_err(|e| ActionError::Failed(format!("marker: {e}")))?;
                        false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
                    Err(e) => return Err(ActionError::Failed(format!("marker: {e}"))),
                };
                if !repeated {
                    use std::io::Write;
                    let mut log = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("effects.log"))
                        .map_err(|e| ActionError::Failed(format!("effects.log: {e}")))?;
                    writeln!(log, "{}", ctx.idempotency_key)
                        .map_err(|e| ActionError::Failed(e.to_string()))?;
                }
                log::info(&format!(
                    "side effect {} for {}",
                    if repeated { "already done" } else { "done" },
                    ctx.idempotency_key
                ));
                let pause: u64 = config.parse_or("pause_ms", 0)?;
                std::thread::sleep(std::time::Duration::from_millis(pause));
                Ok(done().var("Repeated", repeated))
            }
            // Waits for an approval like approval@1 but with no lower bound on its timeout;
            // succeeds with the decisions it was woken with.
            "approval" => match &ctx.wake_payload {
                None => Ok(Outcome::pending("probe-wait", sluice_sdk::WakeOn::Approval)
                    .summary("probe waiting")),
                Some(p) => Ok(done().var("Decisions", p)),
            },
            // Holds until woken (`sluice wake`): lets tests keep an execution inside a stage.
            "hold" => match ctx.continuation.as_deref() {
                None => Ok(Outcome::pending(
                    "held",
                    sluice_sdk::WakeOn::Event(config.get("subject").unwrap_or("release").into()),
                )
                .summary("held until woken")),
                Some(_) => Ok(done().var("Released", ctx.wake_payload.clone().unwrap_or_default())),
            },
            // Holds a secret, as a signing plugin would: logs it (the engine masks it) and
            // returns what it derived from it (a keyed digest: FNV-1a over value and message).
            "reveal" => {
                let name = config.require("secret")?;
                let value = sluice_sdk::secrets::reveal(name).map_err(ActionError::Failed)?;
                log::info(&format!("holding {value} to sign with"));
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for b in value.bytes().chain(b"message".iter().copied()) {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                Ok(done()
                    .var("Length", value.len())
                    .var("Signature", format!("{hash:016x}")))
            }
            other => Err(ActionError::Config(format!("unknown mode {other:?}"))),
        }
    }
}

export_action!(Probe);
