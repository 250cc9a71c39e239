"""Two LLVM operations that numba does not expose and the CPU selection kernel needs: a vector
compare that returns its lanes as a bit mask (one vcmpps + vmovmskps per 8 floats on x86, the
equivalent on ARM), and float <-> int bit casts (for the order keys and the exponent of exp).

Written as numba intrinsics, so they compile into the calling kernel with no call overhead.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

MASK_LANES = 32  # floats compared by one ge_mask call


@intrinsic
def ge_mask(typingctx, arr, start, thresh):
    """uint64 whose bit i is set iff arr[start + i] >= thresh, i < 32 (arr: 1-D C-contiguous float32;
    the caller guarantees start + 32 <= len(arr): no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1):
        return None
    sig = types.uint64(arr, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        vec_t = ir.VectorType(ir.FloatType(), MASK_LANES)
        ptr = builder.gep(ary.data, [args[1]])
        vec = builder.load(builder.bitcast(ptr, vec_t.as_pointer()), align=4)
        splat = builder.insert_element(ir.Constant(vec_t, ir.Undefined), args[2], ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, ir.Constant(vec_t, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), MASK_LANES), [0] * MASK_LANES))
        bits = builder.bitcast(builder.fcmp_ordered(">=", vec, splat), ir.IntType(MASK_LANES))
        return builder.zext(bits, ir.IntType(64))

    return sig, codegen


@intrinsic
def lowest_bit(typingctx, x):
    """Index of the lowest set bit of a non-zero uint64 (tzcnt)."""
    sig = types.intp(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


@intrinsic
def f32_as_i32(typingctx, x):
    """The IEEE-754 bits of a float32 as an int32."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def i32_as_f32(typingctx, x):
    """f32_as_i32's inverse."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def to_f32(typingctx, x):
    """float32 of a float16 held as its bits in an int16 (vcvtph2ps on x86 with F16C; numba has no
    float16 type on the CPU), or of a float32 (itself): one kernel source serves both caches."""
    if isinstance(x, types.Integer) and x.bitwidth == 16:
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    elif x == types.float32:
        def codegen(context, builder, signature, args):
            return args[0]
    else:
        return None
    return types.float32(x), codegen
