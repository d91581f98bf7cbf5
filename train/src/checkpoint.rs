//! Training checkpoints: `<root>/step-<N>/`, written atomically, the last K kept.
//!
//! A checkpoint folder holds
//! - `params.safetensors`: the trainable parameters (f32), under their initializer names;
//! - `optimizer.safetensors`: AdamW's moments, `m.<name>` and `v.<name>` (f32);
//! - `state.json`: `{format, step, optimizer_step, params, optimizer_params, rng, position,
//!   fingerprint}` — the global step, AdamW's step counter, the parameter order (safetensors
//!   files sort their tensors), RNG state words, the data [`Position`] and the run's
//!   configuration fingerprint (a string the caller makes; resume refuses another).
//!
//! Saving writes everything into a temporary folder beside the target (`.step-<N>.tmp…`),
//! syncs each file and the folder, renames it to `step-<N>` and syncs `<root>`: a reader sees a
//! whole checkpoint or none. Only folders named `step-<digits>` with a `state.json` count
//! ([`list_steps`], [`latest`]); leftovers of a crash (`.step-*` folders) are ignored, and
//! removed by the next save. Saving a step that exists replaces it (the old folder is moved
//! aside first, so `step-<N>` is missing, never partial, for a moment). Loading checks every
//! file (the safetensors reader is strict) and that the pieces fit together; errors name the
//! checkpoint and the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use adaptc_passes::peft::safetensors::{serialize, Dtype, OwnedTensor, SafeTensors};
use adaptc_runtime::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::loader::Position;
use crate::optimizer::{AdamW, AdamWConfig, Moments};

pub const PARAMS_FILE: &str = "params.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";

/// The version of the folder layout `state.json` declares.
const FORMAT: u32 = 1;

/// Everything a run needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Optimizer steps taken by the run (the folder is `step-<step>`).
    pub step: u64,
    /// Trainable parameters, `f32`, in the run's order.
    pub params: Vec<(String, Tensor)>,
    /// AdamW's step counter and moments.
    pub optimizer_step: u64,
    pub moments: Vec<Moments>,
    /// RNG state words (dropout streams and the like), restored as given.
    pub rng: Vec<u64>,
    /// Where the next training batch starts.
    pub position: Position,
    /// The run's configuration fingerprint.
    pub fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct State {
    format: u32,
    step: u64,
    optimizer_step: u64,
    params: Vec<String>,
    optimizer_params: Vec<String>,
    rng: Vec<u64>,
    position: Position,
    fingerprint: String,
}

/// `<root>/step-<step>`.
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step}"))
}

/// The steps of the complete checkpoints under `root`, ascending (none when `root` is absent).
pub fn list_steps(root: &Path) -> Result<Vec<u64>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(root, e)),
    };
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(root, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(parse_step) else { continue };
        if entry.path().join(STATE_FILE).is_file() {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// The folder of the highest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list_steps(root)?.last().map(|&s| step_dir(root, s)))
}

/// Loads the latest checkpoint under `root`, refusing one written with another
/// configuration fingerprint; `None` when there is no checkpoint.
pub fn resume(root: &Path, fingerprint: &str) -> Result<Option<Checkpoint>> {
    let Some(dir) = latest(root)? else { return Ok(None) };
    let ck = Checkpoint::load(&dir)?;
    ck.check_fingerprint(&dir, fingerprint)?;
    Ok(Some(ck))
}

fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Checkpoint {
    /// The optimizer this checkpoint's state describes.
    pub fn optimizer(&self, config: AdamWConfig) -> Result<AdamW> {
        AdamW::from_state(config, self.optimizer_step, self.moments.clone())
    }

    /// Fails with [`TrainError::ConfigMismatch`] unless written with `expected`.
    pub fn check_fingerprint(&self, dir: &Path, expected: &str) -> Result<()> {
        if self.fingerprint == expected {
            return Ok(());
        }
        Err(TrainError::ConfigMismatch {
            path: dir.to_path_buf(),
            found: self.fingerprint.clone(),
            expected: expected.to_string(),
        })
    }

    /// Writes `<root>/step-<step>` atomically, then keeps only the `keep` most recent
    /// checkpoints (`keep = 0` keeps all). Returns the folder.
    pub fn save(&self, root: &Path, keep: usize) -> Result<PathBuf> {
        let target = step_dir(root, self.step);
        let [params, optimizer, state] = self.encode().map_err(|reason| TrainError::checkpoint(&target, reason))?;
        std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".step-{}.tmp", self.step))
            .tempdir_in(root)
            .map_err(|e| TrainError::io(root, e))?;
        write_synced(&tmp.path().join(PARAMS_FILE), &params)?;
        write_synced(&tmp.path().join(OPTIMIZER_FILE), &optimizer)?;
        write_synced(&tmp.path().join(STATE_FILE), &state)?;
        sync_dir(tmp.path())?;
        let tmp = tmp.keep();
        let mut old = None;
        if target.exists() {
            let aside = root.join(format!(".step-{}.old-{}", self.step, std::process::id()));
            std::fs::rename(&target, &aside).map_err(|e| TrainError::io(&target, e))?;
            old = Some(aside);
        }
        std::fs::rename(&tmp, &target).map_err(|e| TrainError::io(&target, e))?;
        sync_dir(root)?;
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        prune(root, keep)?;
        Ok(target)
    }

    /// The bytes of the three files: parameters, optimizer, state.
    fn encode(&self) -> Result<[Vec<u8>; 3], String> {
        let mut tensors = Vec::with_capacity(self.params.len());
        for (name, t) in &self.params {
            let v = t.as_slice::<f32>().ok_or_else(|| format!("parameter `{name}` is {}, not float32", t.dtype()))?;
            tensors.push(OwnedTensor::f32(name.clone(), t.shape().iter().map(|&d| d as u64).collect(), v));
        }
        let params = serialize(&tensors, None).map_err(|e| e.to_string())?;
        let mut moments = Vec::with_capacity(2 * self.moments.len());
        for mo in &self.moments {
            moments.push(OwnedTensor::f32(format!("m.{}", mo.name), vec![mo.m.len() as u64], &mo.m));
            moments.push(OwnedTensor::f32(format!("v.{}", mo.name), vec![mo.v.len() as u64], &mo.v));
        }
        let optimizer = serialize(&moments, None).map_err(|e| e.to_string())?;
        let state = State {
            format: FORMAT,
            step: self.step,
            optimizer_step: self.optimizer_step,
            params: self.params.iter().map(|(n, _)| n.clone()).collect(),
            optimizer_params: self.moments.iter().map(|m| m.name.clone()).collect(),
            rng: self.rng.clone(),
            position: self.position,
            fingerprint: self.fingerprint.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        json.push(b'\n');
        Ok([params, optimizer, json])
    }

    /// Reads and checks a checkpoint folder.
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let bad = |reason: String| TrainError::checkpoint(dir, reason);
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read(&state_path).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
        let state: State = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("{STATE_FILE} is not a valid checkpoint state: {e}")))?;
        if state.format != FORMAT {
            return Err(bad(format!("{STATE_FILE} has format {}, this adaptc reads format {FORMAT}", state.format)));
        }
        let params_file = read_tensors(dir, PARAMS_FILE)?;
        let mut params = Vec::with_capacity(state.params.len());
        for name in &state.params {
            let (shape, values) = take(&params_file, name).map_err(|r| bad(format!("{PARAMS_FILE}: {r}")))?;
            params.push((name.clone(), Tensor::from_vec(shape, values)?));
        }
        extra_tensors(&params_file, state.params.len()).map_err(|r| bad(format!("{PARAMS_FILE}: {r}")))?;
        let opt_file = read_tensors(dir, OPTIMIZER_FILE)?;
        let mut moments = Vec::with_capacity(state.optimizer_params.len());
        for name in &state.optimizer_params {
            let m = take(&opt_file, &format!("m.{name}")).map_err(|r| bad(format!("{OPTIMIZER_FILE}: {r}")))?.1;
            let v = take(&opt_file, &format!("v.{name}")).map_err(|r| bad(format!("{OPTIMIZER_FILE}: {r}")))?.1;
            if m.len() != v.len() {
                return Err(bad(format!(
                    "{OPTIMIZER_FILE}: `{name}` has {} first-moment values and {} second-moment values",
                    m.len(),
                    v.len()
                )));
            }
            if let Some((_, p)) = params.iter().find(|(n, _)| n == name) {
                if p.numel() != m.len() {
                    return Err(bad(format!(
                        "{OPTIMIZER_FILE}: `{name}` has {} moment values but the parameter has {}",
                        m.len(),
                        p.numel()
                    )));
                }
            }
            moments.push(Moments { name: name.clone(), m, v });
        }
        extra_tensors(&opt_file, 2 * state.optimizer_params.len())
            .map_err(|r| bad(format!("{OPTIMIZER_FILE}: {r}")))?;
        Ok(Checkpoint {
            step: state.step,
            params,
            optimizer_step: state.optimizer_step,
            moments,
            rng: state.rng,
            position: state.position,
            fingerprint: state.fingerprint,
        })
    }
}

fn read_tensors(dir: &Path, file: &str) -> Result<SafeTensors> {
    // The reader's error names the file and what is wrong with it.
    SafeTensors::read(&dir.join(file)).map_err(|e| TrainError::checkpoint(dir, e.to_string()))
}

fn take(file: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let t = file.get(name).ok_or_else(|| format!("no tensor `{name}`"))?;
    if t.dtype != Dtype::F32 {
        return Err(format!("tensor `{name}` is {}, expected F32", t.dtype));
    }
    let shape = t.shape.iter().map(|&d| usize::try_from(d).map_err(|_| format!("tensor `{name}`: dim {d} too large")));
    Ok((shape.collect::<Result<_, _>>()?, t.to_f32()?))
}

fn extra_tensors(file: &SafeTensors, expected: usize) -> Result<(), String> {
    if file.len() == expected {
        return Ok(());
    }
    Err(format!("{} tensors, but {STATE_FILE} lists {expected}", file.len()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

/// Makes a folder's entries (a rename into it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| TrainError::io(dir, e))
}

/// Removes all but the `keep` newest checkpoints, and crash leftovers (`.step-*`).
fn prune(root: &Path, keep: usize) -> Result<()> {
    let steps = list_steps(root)?;
    if keep > 0 && steps.len() > keep {
        for &s in &steps[..steps.len() - keep] {
            let dir = step_dir(root, s);
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        }
    }
    let entries = std::fs::read_dir(root).map_err(|e| TrainError::io(root, e))?;
    let leftovers: BTreeMap<String, PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (name.starts_with(".step-") && e.path().is_dir()).then(|| (name, e.path()))
        })
        .collect();
    for dir in leftovers.values() {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(step: u64) -> Checkpoint {
        Checkpoint {
            step,
            params: vec![
                (
                    "z.lora_A.weight".into(),
                    Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, step as f32]).unwrap(),
                ),
                ("a.bias".into(), Tensor::from_vec(vec![2], vec![-0.5f32, 0.25]).unwrap()),
            ],
            optimizer_step: step,
            moments: vec![
                Moments { name: "z.lora_A.weight".into(), m: vec![0.1; 6], v: vec![0.01; 6] },
                Moments { name: "a.bias".into(), m: vec![0.2, 0.3], v: vec![0.04, 0.09] },
            ],
            rng: vec![u64::MAX, 42],
            position: Position { epoch: 2, next_row: 17 },
            fingerprint: "lr=0.001 batch=8 data=abc".into(),
        }
    }

    #[test]
    fn round_trip_latest_and_keep() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        assert_eq!(latest(&root).unwrap(), None);
        assert!(resume(&root, "x").unwrap().is_none());
        for step in [10, 20, 30] {
            let at = sample(step).save(&root, 2).unwrap();
            assert_eq!(at, root.join(format!("step-{step}")));
        }
        assert_eq!(list_steps(&root).unwrap(), vec![20, 30]);
        assert_eq!(latest(&root).unwrap(), Some(root.join("step-30")));
        let back = resume(&root, "lr=0.001 batch=8 data=abc").unwrap().unwrap();
        assert_eq!(back, sample(30));
        let opt = back.optimizer(AdamWConfig::default()).unwrap();
        assert_eq!((opt.step_count(), opt.moments()), (30, &sample(30).moments[..]));
        // Saving the same step again replaces it.
        let mut again = sample(30);
        again.rng = vec![1];
        again.save(&root, 0).unwrap();
        assert_eq!(Checkpoint::load(&root.join("step-30")).unwrap(), again);
        assert_eq!(list_steps(&root).unwrap(), vec![20, 30]);
    }

    #[test]
    fn a_different_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        sample(5).save(dir.path(), 0).unwrap();
        let e = resume(dir.path(), "lr=0.01 batch=8 data=abc").unwrap_err().to_string();
        assert!(e.contains("step-5: it was written by a run with configuration `lr=0.001 batch=8 data=abc`"), "{e}");
        assert!(e.contains("this run's is `lr=0.01 batch=8 data=abc`"), "{e}");
    }

    #[test]
    fn crash_leftovers_are_ignored_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        sample(4).save(root, 0).unwrap();
        // A crash while writing step 8: a half-written temporary folder, and a step folder
        // without its state (never produced by save, but not to be trusted either).
        let tmp = root.join(".step-8.tmpAbC123");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join(PARAMS_FILE), b"half").unwrap();
        std::fs::create_dir(root.join("step-9")).unwrap();
        std::fs::create_dir(root.join("step-x1")).unwrap();
        assert_eq!(list_steps(root).unwrap(), vec![4]);
        assert_eq!(resume(root, &sample(4).fingerprint).unwrap().unwrap(), sample(4));
        sample(12).save(root, 0).unwrap();
        assert!(!tmp.exists());
        assert_eq!(list_steps(root).unwrap(), vec![4, 12]);
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let at = sample(3).save(dir.path(), 0).unwrap();
        let params = at.join(PARAMS_FILE);
        let bytes = std::fs::read(&params).unwrap();
        std::fs::write(&params, &bytes[..bytes.len() - 4]).unwrap();
        let e = Checkpoint::load(&at).unwrap_err().to_string();
        assert!(e.starts_with(&format!("checkpoint {}: {}", at.display(), params.display())), "{e}");
        std::fs::write(&params, bytes).unwrap();

        std::fs::write(at.join(STATE_FILE), b"{\"format\": 1, \"step\": ").unwrap();
        let e = Checkpoint::load(&at).unwrap_err().to_string();
        assert!(e.contains("state.json is not a valid checkpoint state"), "{e}");

        let mut ck = sample(3);
        ck.moments[1].m.push(0.0);
        let at = ck.save(dir.path(), 0).unwrap();
        let e = Checkpoint::load(&at).unwrap_err().to_string();
        assert!(e.contains("`a.bias` has 3 first-moment values and 2 second-moment values"), "{e}");

        std::fs::remove_file(at.join(OPTIMIZER_FILE)).unwrap();
        let e = Checkpoint::load(&at).unwrap_err().to_string();
        assert!(e.contains("optimizer.safetensors") && e.contains("cannot open"), "{e}");

        let mut ck = sample(3);
        ck.params[1].1 = Tensor::from_vec(vec![1], vec![1i64]).unwrap();
        let e = ck.save(dir.path(), 0).unwrap_err().to_string();
        assert!(e.contains("parameter `a.bias` is i64, not float32"), "{e}");
    }
}
