//! The primitive ops' vocabularies: elementwise functions of one and two operands, and
//! reductions. Each names its exact semantics, which every backend follows (`apply` is the
//! reference, used by the plain-loops backend and the tests).

/// An elementwise function of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// -x.
    Neg,
    /// |x|.
    Abs,
    /// e^x.
    Exp,
    /// Natural logarithm (NaN below 0, -inf at 0).
    Log,
    /// The square root (NaN below 0).
    Sqrt,
    /// 1 / x.
    Recip,
    /// x * x.
    Square,
    /// The hyperbolic tangent.
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// `crate::relu`: negatives become 0, NaN stays NaN.
    Relu,
}

impl UnaryOp {
    /// Every op, for tests that walk them all.
    pub const ALL: [UnaryOp; 10] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
    ];

    /// The function on one f32.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Square => x * x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => crate::relu(x),
        }
    }

    /// The op's name, as kernels and errors spell it.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Square => "square",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
        }
    }
}

/// The logistic function, computed without overflow for large |x|.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// An elementwise function of two values, with NumPy broadcasting of the operands' shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b.
    Add,
    /// a - b.
    Sub,
    /// a * b.
    Mul,
    /// a / b.
    Div,
    /// The larger; NaN if either is NaN (on the tape: `Tape::maximum`, named as PyTorch's
    /// `torch.maximum`, since `max` there is a reduction).
    #[doc(alias = "maximum")]
    Max,
    /// The smaller; NaN if either is NaN (on the tape: `Tape::minimum`).
    #[doc(alias = "minimum")]
    Min,
    /// 1.0 where a > b, else 0.0 (masks).
    Greater,
    /// 1.0 where a == b, else 0.0.
    Equal,
}

impl BinaryOp {
    /// Every op, for tests that walk them all.
    pub const ALL: [BinaryOp; 8] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Greater,
        BinaryOp::Equal,
    ];

    /// The function on two f32s.
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.max(b)
                }
            }
            BinaryOp::Min => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.min(b)
                }
            }
            BinaryOp::Greater => (a > b) as u8 as f32,
            BinaryOp::Equal => (a == b) as u8 as f32,
        }
    }

    /// The op's name, as kernels and errors spell it.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Greater => "greater",
            BinaryOp::Equal => "equal",
        }
    }
}

/// How `reduce` combines the values along its axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Accumulated in f64, in index order, so the result does not depend on threads.
    Sum,
    /// NaN if any value is NaN; -inf for no values.
    Max,
    /// NaN if any value is NaN; +inf for no values.
    Min,
}

impl ReduceOp {
    /// Every op, for tests that walk them all.
    pub const ALL: [ReduceOp; 3] = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min];

    /// The reduction of `values`, as every backend computes it.
    pub fn apply(self, values: impl IntoIterator<Item = f32>) -> f32 {
        match self {
            ReduceOp::Sum => values.into_iter().map(f64::from).sum::<f64>() as f32,
            ReduceOp::Max => values
                .into_iter()
                .fold(f32::NEG_INFINITY, |m, v| BinaryOp::Max.apply(m, v)),
            ReduceOp::Min => values
                .into_iter()
                .fold(f32::INFINITY, |m, v| BinaryOp::Min.apply(m, v)),
        }
    }

    /// The op's name, as kernels and errors spell it.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_propagates_through_max_min_and_relu() {
        assert!(BinaryOp::Max.apply(f32::NAN, 1.0).is_nan());
        assert!(BinaryOp::Min.apply(1.0, f32::NAN).is_nan());
        assert!(UnaryOp::Relu.apply(f32::NAN).is_nan());
        assert!(ReduceOp::Max.apply([1.0, f32::NAN, 3.0]).is_nan());
        assert_eq!(ReduceOp::Max.apply([1.0, 3.0, 2.0]), 3.0);
        assert_eq!(ReduceOp::Min.apply([]), f32::INFINITY);
    }

    #[test]
    fn sigmoid_is_stable_and_symmetric() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        for x in [-3.0f32, -0.5, 0.25, 4.0] {
            assert!((sigmoid(x) + sigmoid(-x) - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn masks_are_zero_or_one() {
        assert_eq!(BinaryOp::Greater.apply(2.0, 1.0), 1.0);
        assert_eq!(BinaryOp::Greater.apply(1.0, 1.0), 0.0);
        assert_eq!(BinaryOp::Equal.apply(1.0, 1.0), 1.0);
        assert_eq!(BinaryOp::Equal.apply(f32::NAN, f32::NAN), 0.0);
    }

    #[test]
    fn sums_are_accumulated_in_f64() {
        // 2^24 + 1 + 1 is exact in f64, not in f32 added in order.
        assert_eq!(ReduceOp::Sum.apply([16_777_216.0, 1.0, 1.0]), 16_777_218.0);
    }
}
