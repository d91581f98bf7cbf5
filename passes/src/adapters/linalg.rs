//! Small dense linear algebra for adapter passes: weights as row-major `f64` matrices in
//! PyTorch's `[out, in]` orientation whatever their stored layout, products, row norms, and
//! the SVD and QR that `init=pissa` / `init=olora` need (through `nalgebra`, in `f64`).
//!
//! Everything here is plain arithmetic on slices; reading and writing graph tensors is the
//! job of [`read_weight`] and [`store_weight`], which convert between `f32` storage in either
//! [`Layout`] and the `f64` `[out, in]` working form.

use adaptc_ir::{Attribute, DataType, Graph, Tensor};
use nalgebra::DMatrix;

use super::record::Layout;
use crate::pattern::constant_tensor;

/// A row-major `rows × cols` matrix of `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// From row-major `f32` values (`values.len()` must be `rows * cols`).
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Mat {
        debug_assert_eq!(values.len(), rows * cols);
        Mat { rows, cols, data: values.iter().map(|&v| f64::from(v)).collect() }
    }

    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        t
    }

    /// `self · other`, accumulated in `f64`.
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul: inner dimensions differ");
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            let row = &mut out.data[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                if a == 0.0 {
                    continue;
                }
                let b = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, &bv) in row.iter_mut().zip(b) {
                    *o += a * bv;
                }
            }
        }
        out
    }

    /// `self + s·other` (same shapes).
    pub fn add_scaled(&self, s: f64, other: &Mat) -> Mat {
        assert_eq!((self.rows, self.cols), (other.rows, other.cols), "add_scaled: shapes differ");
        let data = self.data.iter().zip(&other.data).map(|(a, b)| a + s * b).collect();
        Mat { rows: self.rows, cols: self.cols, data }
    }

    /// The Euclidean norm of every row.
    pub fn row_norms(&self) -> Vec<f64> {
        self.data
            .chunks(self.cols.max(1))
            .take(self.rows)
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect()
    }

    /// Row-major values rounded to `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    fn to_nalgebra(&self) -> DMatrix<f64> {
        DMatrix::from_row_slice(self.rows, self.cols, &self.data)
    }

    fn from_nalgebra(m: &DMatrix<f64>) -> Mat {
        let mut out = Mat::zeros(m.nrows(), m.ncols());
        for r in 0..m.nrows() {
            for c in 0..m.ncols() {
                out.data[r * m.ncols() + c] = m[(r, c)];
            }
        }
        out
    }
}

/// A thin SVD `W = U · diag(S) · Vᵀ` with the singular values in descending order:
/// `U [rows, k]`, `S [k]`, `Vᵀ [k, cols]`, `k = min(rows, cols)`.
pub struct Svd {
    pub u: Mat,
    pub s: Vec<f64>,
    pub vt: Mat,
}

/// The thin SVD of `w` (nalgebra's Golub–Kahan bidiagonalisation with implicit QR, `f64`).
/// Fails only if the iteration does not converge (non-finite input).
pub fn svd(w: &Mat) -> Result<Svd, String> {
    if w.data.iter().any(|v| !v.is_finite()) {
        return Err("the matrix has non-finite values".into());
    }
    let k = w.rows.min(w.cols);
    let svd = nalgebra::linalg::SVD::try_new(w.to_nalgebra(), true, true, f64::EPSILON, 0)
        .ok_or_else(|| "the SVD did not converge".to_string())?;
    let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
        return Err("the SVD returned no vectors".into());
    };
    let (u, vt) = (Mat::from_nalgebra(&u), Mat::from_nalgebra(&vt));
    let s: Vec<f64> = svd.singular_values.iter().copied().collect();
    // nalgebra does not promise an order: sort descending, carrying the vectors along.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    let mut out = Svd { u: Mat::zeros(w.rows, k), s: Vec::with_capacity(k), vt: Mat::zeros(k, w.cols) };
    for (new, &old) in order.iter().enumerate() {
        out.s.push(s[old]);
        for r in 0..w.rows {
            out.u.data[r * k + new] = u.at(r, old);
        }
        out.vt.data[new * w.cols..(new + 1) * w.cols].copy_from_slice(&vt.data[old * w.cols..(old + 1) * w.cols]);
    }
    Ok(out)
}

/// The reduced QR factorisation `W = Q · R`, `Q [rows, k]` with orthonormal columns,
/// `R [k, cols]` upper triangular, `k = min(rows, cols)` (Householder, as LAPACK's `geqrf`
/// behind `torch.linalg.qr`; the signs of R's diagonal follow nalgebra's reflections).
pub fn qr(w: &Mat) -> Result<(Mat, Mat), String> {
    if w.data.iter().any(|v| !v.is_finite()) {
        return Err("the matrix has non-finite values".into());
    }
    let qr = nalgebra::linalg::QR::new(w.to_nalgebra());
    Ok((Mat::from_nalgebra(&qr.q()), Mat::from_nalgebra(&qr.r())))
}

/// Reads the constant `value` (an initializer or a `Constant` node's tensor) holding a linear
/// layer's weight in `layout` as an `[out, in]` matrix. Only `float32` is accepted: adapter
/// weights are `float32`, and ONNX does not mix element types in one `MatMul`/`Add`.
pub fn read_weight(graph: &Graph, value: &str, layout: Layout) -> Result<Mat, String> {
    let t = constant_tensor(graph, value).ok_or_else(|| format!("weight `{value}` is not a constant tensor"))?;
    let [d0, d1] = *t.dims() else {
        return Err(format!("weight `{value}` has shape {:?}, expected 2-D", t.dims()));
    };
    if t.dtype() != DataType::Float {
        return Err(format!(
            "weight `{value}` is {}; only f32 (float32) base weights are supported (convert the model to float32 first)",
            t.dtype()
        ));
    }
    let values = t.to_f32().map_err(|e| format!("reading weight `{value}`: {e}"))?;
    let stored = Mat::from_f32(d0 as usize, d1 as usize, &values);
    Ok(match layout {
        Layout::OutIn => stored,
        Layout::InOut => stored.transpose(),
    })
}

/// Writes the `[out, in]` matrix `w` back into the constant `value` in its stored `layout`, as
/// `float32` (an initializer keeps its name, position, doc string and metadata; a `Constant`
/// node gets a new `value` attribute).
pub fn store_weight(graph: &mut Graph, value: &str, layout: Layout, w: &Mat) -> Result<(), String> {
    let stored = match layout {
        Layout::OutIn => w.to_f32(),
        Layout::InOut => w.transpose().to_f32(),
    };
    let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Some(t) = graph.initializer_mut(value) {
        return t.set_bytes(bytes).map_err(|e| format!("writing weight `{value}`: {e}"));
    }
    let Some((id, 0)) = graph.producer(value) else {
        return Err(format!("weight `{value}` is not a constant tensor"));
    };
    let old = graph
        .node(id)
        .attr("value")
        .and_then(|a| a.as_tensor())
        .ok_or_else(|| format!("weight `{value}` is not a constant tensor"))?;
    let t = Tensor::from_bytes(old.name.clone(), DataType::Float, old.dims().to_vec(), bytes)
        .map_err(|e| format!("writing weight `{value}`: {e}"))?;
    graph.set_attr(id, Attribute::tensor("value", t));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Mat, b: &Mat, tol: f64) -> bool {
        a.rows == b.rows && a.cols == b.cols && a.data.iter().zip(&b.data).all(|(x, y)| (x - y).abs() <= tol)
    }

    fn sample(rows: usize, cols: usize) -> Mat {
        let data = (0..rows * cols).map(|i| ((i * 7919 % 113) as f64 / 37.0) - 1.3).collect();
        Mat { rows, cols, data }
    }

    #[test]
    fn svd_reconstructs_and_sorts() {
        for (r, c) in [(5, 3), (3, 5), (4, 4)] {
            let w = sample(r, c);
            let d = svd(&w).unwrap();
            assert!(d.s.windows(2).all(|p| p[0] >= p[1]), "{:?}", d.s);
            let mut us = d.u.clone();
            for row in 0..us.rows {
                for k in 0..us.cols {
                    us.data[row * us.cols + k] *= d.s[k];
                }
            }
            assert!(close(&us.matmul(&d.vt), &w, 1e-10));
        }
    }

    #[test]
    fn qr_reconstructs_with_orthonormal_q() {
        for (r, c) in [(5, 3), (3, 5), (4, 4)] {
            let w = sample(r, c);
            let (q, rr) = qr(&w).unwrap();
            let k = r.min(c);
            assert_eq!((q.rows, q.cols, rr.rows, rr.cols), (r, k, k, c));
            assert!(close(&q.matmul(&rr), &w, 1e-10));
            let mut eye = Mat::zeros(k, k);
            for i in 0..k {
                eye.data[i * k + i] = 1.0;
            }
            assert!(close(&q.transpose().matmul(&q), &eye, 1e-10));
            for i in 0..k {
                for j in 0..i.min(c) {
                    assert!(rr.at(i, j).abs() < 1e-12, "R is upper triangular");
                }
            }
        }
    }

    #[test]
    fn weights_round_trip_in_both_layouts() {
        let mut g = Graph::new("g");
        g.add_initializer(Tensor::from_f32("w", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap()).unwrap();
        let oi = read_weight(&g, "w", Layout::InOut).unwrap();
        assert_eq!((oi.rows, oi.cols), (3, 2));
        assert_eq!(oi.data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        store_weight(&mut g, "w", Layout::InOut, &oi.add_scaled(1.0, &oi)).unwrap();
        assert_eq!(g.initializer("w").unwrap().to_f32().unwrap(), vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        assert_eq!(read_weight(&g, "w", Layout::OutIn).unwrap().row_norms().len(), 2);
        g.add_initializer(Tensor::from_bytes("h", DataType::Float16, vec![1, 1], vec![0, 0]).unwrap()).unwrap();
        assert!(read_weight(&g, "h", Layout::OutIn).unwrap_err().contains("is f16"));
    }
}
