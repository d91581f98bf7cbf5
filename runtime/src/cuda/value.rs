//! [`CudaValue`]: a tensor that lives on the host, the device, or both. Each side is filled
//! at most once, when a reader needs it there, so a value read by many device kernels is
//! uploaded once and shape arithmetic done on the host never waits for the device.

use std::sync::{Arc, OnceLock};

use adaptc_ir::DataType;
use cudarc::driver::CudaSlice;

use super::device::Gpu;
use super::launch::{DevError, DevResult};
use crate::tensor::{numel, storage_from_le_bytes, Storage, Tensor};

/// Device memory shared by the values that alias it (a Reshape shares its input's).
pub type DeviceMem = Arc<CudaSlice<u8>>;

#[derive(Debug)]
pub struct CudaValue {
    shape: Vec<usize>,
    dtype: DataType,
    host: OnceLock<Tensor>,
    device: OnceLock<DeviceMem>,
}

/// Bytes per element of the types the device holds (bool is one byte); `None` for the others
/// (strings, sub-byte types), which stay on the host.
pub fn device_elem_bytes(dtype: DataType) -> Option<usize> {
    Some(match dtype {
        DataType::Bool | DataType::Int8 | DataType::Uint8 => 1,
        DataType::Float16 | DataType::BFloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Double | DataType::Int64 | DataType::Uint64 => 8,
        _ => return None,
    })
}

impl CudaValue {
    pub fn from_host(t: Tensor) -> CudaValue {
        let v =
            CudaValue { shape: t.shape().to_vec(), dtype: t.dtype(), host: OnceLock::new(), device: OnceLock::new() };
        let _ = v.host.set(t);
        v
    }

    pub fn from_device(shape: Vec<usize>, dtype: DataType, mem: DeviceMem) -> CudaValue {
        let v = CudaValue { shape, dtype, host: OnceLock::new(), device: OnceLock::new() };
        let _ = v.device.set(mem);
        v
    }

    /// The same elements under another shape (same count): shares whichever sides exist.
    pub fn reshaped(&self, shape: Vec<usize>) -> DevResult<CudaValue> {
        let v = CudaValue { shape: shape.clone(), dtype: self.dtype, host: OnceLock::new(), device: OnceLock::new() };
        if let Some(m) = self.device.get() {
            let _ = v.device.set(m.clone());
        }
        if let Some(t) = self.host.get() {
            let t = t.clone().reshaped(shape).map_err(|e| DevError::Device(e.to_string()))?;
            let _ = v.host.set(t);
        }
        Ok(v)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape).unwrap_or(0)
    }

    pub fn on_device(&self) -> bool {
        self.device.get().is_some()
    }

    pub fn byte_size(&self) -> usize {
        self.numel() * device_elem_bytes(self.dtype).unwrap_or(8)
    }

    /// Identity of the memory behind the value (device first), for the memory report.
    pub fn storage_key(&self) -> usize {
        match (self.device.get(), self.host.get()) {
            (Some(m), _) => Arc::as_ptr(m) as usize,
            (None, Some(t)) => t.storage_key(),
            (None, None) => 0,
        }
    }

    /// The host copy if there is one (never downloads).
    pub fn host_if_present(&self) -> Option<&Tensor> {
        self.host.get()
    }

    /// The host copy, downloading it (once) if the value was made on the device.
    pub fn host(&self, gpu: &Gpu) -> DevResult<&Tensor> {
        if let Some(t) = self.host.get() {
            return Ok(t);
        }
        let mem = self.device.get().ok_or_else(|| DevError::Device("a value with no storage".into()))?;
        if gpu.capturing() {
            // A replay would repeat whatever the host computed from it now.
            return Err(DevError::Device(
                "it reads a device value on the host, which a CUDA graph cannot capture".into(),
            ));
        }
        let bytes = gpu.stream.clone_dtoh(mem.as_ref())?;
        let len = self.byte_size().min(bytes.len());
        let storage = storage_from_le_bytes(self.dtype, &bytes[..len])
            .ok_or_else(|| DevError::Device(format!("cannot read {} back from the device", self.dtype)))?;
        let t = Tensor::new(self.shape.clone(), storage).map_err(|e| DevError::Device(e.to_string()))?;
        gpu.count_download(len);
        Ok(self.host.get_or_init(|| t))
    }

    /// The device copy, uploading it (once) if the value was made on the host.
    pub fn device(&self, gpu: &Gpu) -> DevResult<&DeviceMem> {
        if let Some(m) = self.device.get() {
            return Ok(m);
        }
        let t = self.host.get().ok_or_else(|| DevError::Device("a value with no storage".into()))?;
        if device_elem_bytes(self.dtype).is_none() || matches!(t.data(), Storage::Str(_)) {
            return Err(DevError::Host(format!("{} tensors stay on the host", self.dtype)));
        }
        let mem = gpu.upload_bytes(&t.to_le_bytes())?;
        Ok(self.device.get_or_init(|| mem))
    }

    /// The value on the device and nowhere else (uploaded first if need be): what a captured
    /// run reads, so that no host instruction can read it without the capture noticing, and
    /// no host copy outlives a replay that changes the device memory.
    pub fn device_only(&self, gpu: &Gpu) -> DevResult<CudaValue> {
        let mem = self.device(gpu)?.clone();
        Ok(CudaValue::from_device(self.shape.clone(), self.dtype, mem))
    }

    /// The device memory if there is some (never uploads).
    pub fn device_if_present(&self) -> Option<&DeviceMem> {
        self.device.get()
    }
}

/// Allocates an uninitialised device buffer for `numel` elements of `dtype` (at least one byte).
pub fn alloc(gpu: &Gpu, dtype: DataType, numel: usize) -> DevResult<CudaSlice<u8>> {
    let bytes = device_elem_bytes(dtype).ok_or_else(|| DevError::Host(format!("{dtype} tensors stay on the host")))?;
    let n = (numel * bytes).max(1);
    // SAFETY: every kernel writes all `numel` elements of its output before anything reads them.
    Ok(unsafe { gpu.stream.alloc::<u8>(n) }?)
}
