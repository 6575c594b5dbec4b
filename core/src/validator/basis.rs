//! Least squares of each sketch on the sketches seen before it, for the copy check.
//!
//! An orthonormal basis is grown one vector at a time by modified Gram–Schmidt with one
//! re-orthogonalisation pass ("twice is enough": the basis stays orthogonal to working
//! precision however close the vectors are), in f64. A vector whose residual is below
//! `DEPENDENT` of its norm adds no direction (it is, to f32 rounding, a combination of
//! earlier ones) and is not kept, so the triangular factor stays well conditioned and a
//! copy's coefficients always land on the vectors it was made from.

use std::ops::Range;

/// Residual, relative to the vector's norm, below which a vector adds no direction: far
/// above the rounding of f32 sketches (~1e-7) and far below any novelty worth telling
/// apart (the copy threshold is ~0.3 of a window's typical own part).
const DEPENDENT: f64 = 1e-4;

/// How a vector is explained by the vectors it may be compared with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Explained {
    /// Norm of what no combination of them explains.
    pub residual: f64,
    /// Least-squares coefficient of each of them (by the caller's index), zeros left out.
    pub coefficients: Vec<(usize, f64)>,
}

/// The projection of a vector on a [`Basis`].
struct Projection {
    /// Coefficients on the basis vectors `q`.
    coeffs: Vec<f64>,
    residual: Vec<f64>,
    norm: f64,
}

/// Orthonormal `q` and the triangular factor of the kept vectors: kept vector `k` is
/// `Σ_{l ≤ k} r[k][l] q_l`.
#[derive(Default)]
struct Basis {
    q: Vec<Vec<f64>>,
    r: Vec<Vec<f64>>,
    /// The caller's index of each kept vector.
    owner: Vec<usize>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

impl Basis {
    fn project(&self, x: &[f64]) -> Projection {
        let mut residual = x.to_vec();
        let mut coeffs = vec![0.0; self.q.len()];
        for _pass in 0..2 {
            for (c, q) in coeffs.iter_mut().zip(&self.q) {
                let a = dot(q, &residual);
                *c += a;
                residual.iter_mut().zip(q).for_each(|(r, q)| *r -= a * q);
            }
        }
        let norm = norm(&residual);
        Projection { coeffs, residual, norm }
    }

    /// Keeps the projected vector when it adds a direction; returns whether it did.
    fn push(&mut self, owner: usize, p: Projection, x_norm: f64) -> bool {
        if !(p.norm > DEPENDENT * x_norm && p.norm.is_finite()) {
            return false;
        }
        let mut column = p.coeffs;
        column.push(p.norm);
        self.q.push(p.residual.iter().map(|v| v / p.norm).collect());
        self.r.push(column);
        self.owner.push(owner);
        true
    }

    /// `a` with `R a = c`: coefficients on the kept vectors of what `Σ c_l q_l` is.
    fn solve(&self, c: &[f64]) -> Vec<f64> {
        let m = self.r.len();
        let mut a = vec![0.0; m];
        for k in (0..m).rev() {
            let later: f64 = (k + 1..m).map(|j| self.r[j][k] * a[j]).sum();
            a[k] = (c.get(k).copied().unwrap_or(0.0) - later) / self.r[k][k];
        }
        a
    }

    fn by_owner(&self, a: &[f64]) -> Vec<(usize, f64)> {
        self.owner.iter().copied().zip(a.iter().copied()).filter(|(_, v)| *v != 0.0).collect()
    }
}

/// Explains each vector by every vector of the groups before its own (`groups` partition
/// `0..vectors.len()` in order; members of one group, tied in time, are not compared with
/// each other): the residual norm of the least-squares fit and its coefficients.
pub(super) fn explain(vectors: &[Vec<f64>], groups: &[Range<usize>]) -> Vec<Explained> {
    let mut basis = Basis::default();
    let mut out = Vec::with_capacity(vectors.len());
    for group in groups {
        let projected: Vec<(usize, Projection)> = group.clone().map(|i| (i, basis.project(&vectors[i]))).collect();
        for (_, p) in &projected {
            out.push(Explained { residual: p.norm, coefficients: basis.by_owner(&basis.solve(&p.coeffs)) });
        }
        for (k, (i, p)) in projected.into_iter().enumerate() {
            let x_norm = norm(&vectors[i]);
            // The first member's projection is current; a later one's must see the members
            // pushed before it.
            let p = if k == 0 { p } else { basis.project(&vectors[i]) };
            basis.push(i, p, x_norm);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.random::<f64>() - 0.5).collect()
    }

    fn singles(n: usize) -> Vec<Range<usize>> {
        (0..n).map(|i| i..i + 1).collect()
    }

    fn coefficient(e: &Explained, j: usize) -> f64 {
        e.coefficients.iter().find(|(k, _)| *k == j).map_or(0.0, |(_, c)| *c)
    }

    #[test]
    fn a_combination_of_earlier_vectors_is_explained_with_its_coefficients() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (a, b) = (random(&mut rng, 200), random(&mut rng, 200));
        let mix: Vec<f64> = a.iter().zip(&b).map(|(a, b)| 2.0 * a - 0.5 * b).collect();
        let out = explain(&[a.clone(), b, mix], &singles(3));
        assert!((out[0].residual - norm(&a)).abs() < 1e-12, "nothing before the first");
        assert!(out[1].residual > 0.5 * norm(&a));
        assert!(out[2].residual < 1e-10 * norm(&a), "{}", out[2].residual);
        assert!((coefficient(&out[2], 0) - 2.0).abs() < 1e-9 && (coefficient(&out[2], 1) + 0.5).abs() < 1e-9);
    }

    #[test]
    fn nearly_parallel_earlier_vectors_stay_orthogonal_and_exact_repeats_add_nothing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let a = random(&mut rng, 300);
        let near: Vec<f64> = a.iter().map(|v| v * (1.0 + 1e-3 * (rng.random::<f64>() - 0.5))).collect();
        let vectors = vec![a.clone(), a.clone(), near.clone(), random(&mut rng, 300)];
        let mut basis = Basis::default();
        for (i, v) in vectors.iter().enumerate() {
            let p = basis.project(v);
            basis.push(i, p, norm(v));
        }
        assert_eq!(basis.owner, vec![0, 2, 3], "the repeat adds no direction");
        for i in 0..basis.q.len() {
            for j in 0..basis.q.len() {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot(&basis.q[i], &basis.q[j]) - expected).abs() < 1e-12);
            }
        }
        // The repeat of `a` is attributed to `a`, not to its near copy.
        let out = explain(&vectors, &singles(4));
        assert!(out[1].residual < 1e-12 && (coefficient(&out[1], 0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn members_of_one_group_are_not_compared_with_each_other_but_later_ones_see_them_all() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (e, a, b) = (random(&mut rng, 100), random(&mut rng, 100), random(&mut rng, 100));
        let mean: Vec<f64> = a.iter().zip(&b).map(|(a, b)| 0.5 * (a + b)).collect();
        // e earlier; then a tied group of a, its repeat and b; then the mean of a and b.
        let vectors = vec![e, a.clone(), a.clone(), b, mean];
        let out = explain(&vectors, &[0..1, 1..4, 4..5]);
        for i in 1..4 {
            assert!(out[i].residual > 0.5 * norm(&vectors[i]), "{i}: tied, so novel: {}", out[i].residual);
        }
        assert!(out[4].residual < 1e-10, "{}", out[4].residual);
        assert!((coefficient(&out[4], 1) - 0.5).abs() < 1e-9 && (coefficient(&out[4], 3) - 0.5).abs() < 1e-9);
        assert_eq!(coefficient(&out[4], 2), 0.0, "the repeat added no direction: {:?}", out[4]);
    }
}
