/* Inner loops of codec._mulaw: μ-law tables and the polyphase FIR, in plain C.
 *
 * Plain C that GCC/Clang auto-vectorise: the FIR is an int16 x int16 dot product summed in int32
 * (vpmaddwd on x86).  Coefficients are split as c = 256*hi + lo so that 16-bit multiplies keep
 * 22-bit coefficient precision; codec/_common.py proves the int32 sums cannot overflow for any
 * input (plan.split; otherwise the plan takes an int64 loop).  The result is the exact integer
 * sum(x * c), so it equals the NumPy fallback's bit for bit.
 *
 * On x86-64 Linux/glibc, GCC/Clang compile the hot loops twice (target_clones): an AVX2 copy picked
 * at load time where the CPU has it, and a baseline copy.  The build never needs -march=native.
 * Common widths K get their own fully unrolled copy (the coefficients then stay in registers).
 */
#ifndef SPEAKR_CODEC_KERNELS_H
#define SPEAKR_CODEC_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) \
    && !defined(SPEAKR_CODEC_NO_CLONES)
#  if defined(__has_attribute)
#    if __has_attribute(target_clones)
#      define SR_CLONES __attribute__((target_clones("avx2", "default")))
#    endif
#  endif
#endif
#ifndef SR_CLONES
#  define SR_CLONES
#endif

#if defined(__GNUC__)
#  define SR_INLINE static inline __attribute__((always_inline))
#  define SR_RESTRICT __restrict__
#else
#  define SR_INLINE static inline
#  define SR_RESTRICT
#endif

#define SR_SCALE_BITS 22

typedef struct {
    int up;                  /* L */
    int down;                /* M */
    int width;               /* K, taps per branch */
    int split;               /* int32 sums of x*hi, x*lo cannot overflow (else int64 x*coef) */
    const int32_t *phase;    /* [L] branch of output m: phase[m % L] */
    const int64_t *q_offset; /* [L] window start offset of output m within its block */
    const int16_t *hi;       /* [L*K] */
    const int16_t *lo;       /* [L*K] */
    const int32_t *coef;     /* [L*K] 256*hi + lo */
} sr_plan;

/* ---- μ-law ------------------------------------------------------------------------------------ */

/* The 16-bit pattern of little-endian sample i (one plain load on little-endian hosts). */
SR_INLINE unsigned sr_le16(const uint8_t *SR_RESTRICT src, Py_ssize_t i)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint16_t u;
    memcpy(&u, src + 2 * i, 2);
    return u;
#else
    return (unsigned)src[2 * i] | ((unsigned)src[2 * i + 1] << 8);
#endif
}

/* PCM16LE -> μ-law: code = table[(x >> 2) & 0x3FFF], i.e. the top 14 bits of the 16-bit pattern. */
SR_CLONES static void sr_ulaw_encode(const uint8_t *SR_RESTRICT src, Py_ssize_t n,
                                     uint8_t *SR_RESTRICT dst, const uint8_t *SR_RESTRICT table)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[i] = table[sr_le16(src, i) >> 2];
    }
}

/* μ-law -> PCM16LE via a 256-entry table of little-endian sample bytes. */
static void sr_ulaw_decode(const uint8_t *SR_RESTRICT src, Py_ssize_t n, uint8_t *SR_RESTRICT dst,
                           const uint16_t *SR_RESTRICT table_le)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(dst + 2 * i, &table_le[src[i]], 2);
    }
}

/* PCM16LE bytes -> int16 samples (a plain copy on little-endian hosts). */
static void sr_load_pcm(const uint8_t *SR_RESTRICT src, Py_ssize_t n, int16_t *SR_RESTRICT dst)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(dst, src, (size_t)n * 2);
#else
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[i] = (int16_t)(uint16_t)sr_le16(src, i);
    }
#endif
}

/* ---- FIR -------------------------------------------------------------------------------------- */

SR_INLINE int32_t sr_clip(int64_t y)
{
    return y > 32767 ? 32767 : (y < -32768 ? -32768 : (int32_t)y);
}

/* floor(acc / 2**S + 1/2), then clip to int16: the one rounding rule of both implementations. */
SR_INLINE int32_t sr_round(int64_t acc)
{
    return sr_clip((acc + ((int64_t)1 << (SR_SCALE_BITS - 1))) >> SR_SCALE_BITS);
}

/* The same for acc = 256 * s_hi + s_lo, in int32: with s_lo = 256 * a + b (0 <= b < 256),
 * acc + 2**21 = 256 * (s_hi + a + 2**13) + b and b < 256 never changes floor(. / 2**22). */
SR_INLINE int32_t sr_round_split(int32_t s_hi, int32_t s_lo)
{
    return sr_clip((s_hi + (s_lo >> 8) + (1 << (SR_SCALE_BITS - 9))) >> (SR_SCALE_BITS - 8));
}

static inline void sr_put(uint8_t *SR_RESTRICT dst, Py_ssize_t m, int32_t y,
                          const uint8_t *SR_RESTRICT ulaw_table)
{
    if (ulaw_table) {
        dst[m] = ulaw_table[(uint16_t)y >> 2];
    } else {
        dst[2 * m] = (uint8_t)(y & 0xFF);
        dst[2 * m + 1] = (uint8_t)(((uint32_t)y >> 8) & 0xFF);
    }
}

/* Outputs n_out samples.  Output number k (0-based) reads buf[q : q + K] where
 * q = qb + q_offset[j] with j, qb advanced per output: j += 1; on j == L, j = 0 and qb += M.
 * `single` (L == 1) and `width` are compile-time constants in the specialised copies.
 * Results go through a small local array first: a byte store to dst could alias anything, which
 * would make the compiler reload the coefficients after every output. */
#define SR_CHUNK 64
SR_INLINE void sr_fir_body(const int16_t *SR_RESTRICT buf, Py_ssize_t qb, int j, Py_ssize_t n_out,
                           const sr_plan *p, uint8_t *SR_RESTRICT dst,
                           const uint8_t *SR_RESTRICT ulaw_table, const int width, const int single)
{
    const int up = single ? 1 : p->up;
    const int down = p->down;
    const int16_t *const hi0 = p->hi;
    const int16_t *const lo0 = p->lo;
    const int32_t *const phase = p->phase;
    const int64_t *const q_offset = p->q_offset;
    const Py_ssize_t q0 = (Py_ssize_t)q_offset[0];
    int32_t ys[SR_CHUNK];
    for (Py_ssize_t m0 = 0; m0 < n_out; m0 += SR_CHUNK) {
        const int count = n_out - m0 < SR_CHUNK ? (int)(n_out - m0) : SR_CHUNK;
        for (int k = 0; k < count; k++) {
            const int16_t *x = buf + qb + (single ? q0 : (Py_ssize_t)q_offset[j]);
            const Py_ssize_t row = single ? 0 : (Py_ssize_t)phase[j] * width;
            const int16_t *hi = hi0 + row;
            const int16_t *lo = lo0 + row;
            int32_t s_hi = 0, s_lo = 0;
            for (int i = 0; i < width; i++) {
                s_hi += (int32_t)x[i] * hi[i];
                s_lo += (int32_t)x[i] * lo[i];
            }
            ys[k] = sr_round_split(s_hi, s_lo);
            if (single) {
                qb += down;
            } else if (++j == up) {
                j = 0;
                qb += down;
            }
        }
        uint8_t *SR_RESTRICT out = dst + (ulaw_table ? m0 : 2 * m0);
        if (ulaw_table) {
            for (int k = 0; k < count; k++) {
                out[k] = ulaw_table[(uint16_t)ys[k] >> 2];
            }
        } else {
            for (int k = 0; k < count; k++) {
                out[2 * k] = (uint8_t)(ys[k] & 0xFF);
                out[2 * k + 1] = (uint8_t)(((uint32_t)ys[k] >> 8) & 0xFF);
            }
        }
    }
}

/* Plans whose int32 split sums could overflow (very wide branches): exact int64 sums of x * c. */
static void sr_fir_wide(const int16_t *SR_RESTRICT buf, Py_ssize_t qb, int j, Py_ssize_t n_out,
                        const sr_plan *p, uint8_t *SR_RESTRICT dst,
                        const uint8_t *SR_RESTRICT ulaw_table)
{
    const int width = p->width;
    for (Py_ssize_t m = 0; m < n_out; m++) {
        const int16_t *x = buf + qb + p->q_offset[j];
        const int32_t *c = p->coef + (Py_ssize_t)p->phase[j] * width;
        int64_t acc = 0;
        for (int i = 0; i < width; i++) {
            acc += (int64_t)x[i] * c[i];
        }
        sr_put(dst, m, sr_round(acc), ulaw_table);
        if (++j == p->up) {
            j = 0;
            qb += p->down;
        }
    }
}

#define SR_CASE(K)                                                                  \
    case K:                                                                         \
        if (p->up == 1) {                                                           \
            sr_fir_body(buf, qb, j, n_out, p, dst, ulaw_table, K, 1);               \
        } else {                                                                    \
            sr_fir_body(buf, qb, j, n_out, p, dst, ulaw_table, K, 0);               \
        }                                                                           \
        return;

/* One call computes every ready output.  ulaw_table == NULL: PCM16LE out, else μ-law out. */
SR_CLONES static void sr_fir(const int16_t *SR_RESTRICT buf, Py_ssize_t qb, int j, Py_ssize_t n_out,
                             const sr_plan *p, uint8_t *SR_RESTRICT dst,
                             const uint8_t *SR_RESTRICT ulaw_table)
{
    if (!p->split) {
        sr_fir_wide(buf, qb, j, n_out, p, dst, ulaw_table);
        return;
    }
    switch (p->width) {
        SR_CASE(16)
        SR_CASE(24)
        SR_CASE(32)
        SR_CASE(40)
        SR_CASE(48)
        SR_CASE(64)
        SR_CASE(72)
        SR_CASE(80)
        SR_CASE(96)
        SR_CASE(144)
        default:
            sr_fir_body(buf, qb, j, n_out, p, dst, ulaw_table, p->width, 0);
            return;
    }
}

#endif /* SPEAKR_CODEC_KERNELS_H */
