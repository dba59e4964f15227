/* The float32 and float64 row kernels of an instruction set with 32-byte vectors
 * (x86-64-v3, AVX): _cmetrics.c defines ISA_ATTR and ISA_SFX(type) (the name suffix) and
 * includes this once per such set, so the two sets share one instantiation list. */
#define IS_F32 1
#define SFX ISA_SFX(f32)
#define MASKLOAD(p, n) ((f32x8)_mm256_maskload_ps(p, (__m256i)((i32x8)IOTA8 < (int32_t)(n))))
#define T float
#define VT f32x8
#define VI i32x8
#define VU u32x8
#define VD f64x4
#define IT int32_t
#define IT_MAX INT32_MAX
#define VL 8
#define IOTA IOTA8
#include "_cmetrics_rows.h"
#define IS_F32 0
#define SFX ISA_SFX(f64)
#define MASKLOAD(p, n) ((f64x4)_mm256_maskload_pd(p, (__m256i)((i64x4)IOTA4 < (int64_t)(n))))
#define T double
#define VT f64x4
#define VI i64x4
#define VU u64x4
#define VD f64x4
#define IT int64_t
#define IT_MAX INT64_MAX
#define VL 4
#define IOTA IOTA4
#include "_cmetrics_rows.h"
