/* Score-and-threshold on Intel AMX: which (document, query) pairs have a bf16 score reaching the query's bound.
 *
 * The bf16 prefilter of harness/engine/search.py needs, per chunk, only the few pairs whose approximate score
 * reaches a per-query bound. Through torch that is a matrix product writing every bf16 score to memory and a
 * second pass reading them back; here each 16 x 16 tile of fp32 accumulators is compared with the bounds while
 * it is still in registers, and only the hits leave the kernel.
 *
 * Layouts (the Python side pads: rows to multiples of 32, the dimension to a multiple of 32):
 *   docs   [n, K] bf16, row-major                 (tile A: 16 documents x 32 dimensions)
 *   qpack  [K/2, m] int32: pairs of bf16 values, dimension pair p of query j at qpack[p * m + j]
 *                                                  (tile B in the VNNI layout TDPBF16PS reads)
 *   lower  [m] float32: a pair is a hit when its fp32 accumulator is >= lower[query]
 *   group_max  [n/32, m] float32 or NULL: if given, also the largest accumulator of each 32 documents per query
 *              (the search's first chunk: its admission floors come from these)
 * The caller splits the documents across threads; each call handles documents [d0, d1).
 * Returns the number of hits; only the first `cap` are written (the caller retries with room for all).
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Linux hands out the AMX tile state only on request, once per process. 0: granted. */
int harness_amx_request(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

typedef struct {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

#define EMIT(tile, doc0, query0, bound)                                                   \
  for (int r = 0; r < 16; r++) {                                                         \
    __mmask16 mask = _mm512_cmp_ps_mask(_mm512_load_ps(acc[tile][r]), bound, _CMP_GE_OQ); \
    while (mask) {                                                                       \
      int bit = __builtin_ctz(mask);                                                     \
      mask &= mask - 1;                                                                  \
      if (count < cap) {                                                                 \
        out_doc[count] = (int32_t)(doc0 + r);                                            \
        out_query[count] = (int32_t)(query0 + bit);                                      \
      }                                                                                  \
      count++;                                                                           \
    }                                                                                    \
  }

int64_t harness_bf16_hits(const uint16_t *docs, const int32_t *qpack, const float *lower, int64_t m, int64_t K,
                          int64_t d0, int64_t d1, int64_t doc_block, int64_t query_block, float *group_max,
                          int32_t *out_doc, int32_t *out_query, int64_t cap) {
  tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; t++) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  float acc[4][16][16] __attribute__((aligned(64)));
  int64_t count = 0;
  /* a block of documents and a block of queries both stay in L2 while every tile pair of them is scored */
  for (int64_t b0 = d0; b0 < d1; b0 += doc_block) {
    int64_t b1 = b0 + doc_block < d1 ? b0 + doc_block : d1;
    for (int64_t q0 = 0; q0 < m; q0 += query_block) {
      int64_t q1 = q0 + query_block < m ? q0 + query_block : m;
      for (int64_t i = b0; i < b1; i += 32) {
        for (int64_t j = q0; j < q1; j += 32) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t k = 0; k < K; k += 32) {
            _tile_loadd(4, docs + i * K + k, K * 2);
            _tile_loadd(5, docs + (i + 16) * K + k, K * 2);
            _tile_loadd(6, qpack + (k / 2) * m + j, m * 4);
            _tile_loadd(7, qpack + (k / 2) * m + j + 16, m * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, acc[0], 64);
          _tile_stored(1, acc[1], 64);
          _tile_stored(2, acc[2], 64);
          _tile_stored(3, acc[3], 64);
          __m512 low0 = _mm512_loadu_ps(lower + j), low1 = _mm512_loadu_ps(lower + j + 16);
          EMIT(0, i, j, low0)
          EMIT(1, i, j + 16, low1)
          EMIT(2, i + 16, j, low0)
          EMIT(3, i + 16, j + 16, low1)
          if (group_max) {
            __m512 g0 = _mm512_max_ps(_mm512_load_ps(acc[0][0]), _mm512_load_ps(acc[2][0]));
            __m512 g1 = _mm512_max_ps(_mm512_load_ps(acc[1][0]), _mm512_load_ps(acc[3][0]));
            for (int r = 1; r < 16; r++) {
              g0 = _mm512_max_ps(g0, _mm512_max_ps(_mm512_load_ps(acc[0][r]), _mm512_load_ps(acc[2][r])));
              g1 = _mm512_max_ps(g1, _mm512_max_ps(_mm512_load_ps(acc[1][r]), _mm512_load_ps(acc[3][r])));
            }
            _mm512_storeu_ps(group_max + (i / 32) * m + j, g0);
            _mm512_storeu_ps(group_max + (i / 32) * m + j + 16, g1);
          }
        }
      }
    }
  }
  _tile_release();
  return count;
}

/* Rows [r0, r1) of x [n, dim] float32 to bf16, rounded to nearest even (as torch rounds), into out [.., k_pad]
 * with the padding columns zeroed; stats[0] and stats[1] get the largest squared norm of a row and of its
 * rounding residual (x - bf16(x)): the prefilter's error bound needs both. One pass, where torch needs a
 * conversion, a widening copy, a subtraction and two norms. Squares and sums are in double: in fp32 the squares
 * of tiny residuals (|x| < ~1e-20) underflow to 0 and those of huge values (> ~1e19) overflow, and either
 * breaks the bound. A row with NaN or inf makes stats NaN or inf (the caller rejects such input). */
static inline __m512i to_bf16_bits(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); /* NaN stays NaN (quiet) */
  __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_mov_epi32(rounded, nan, quiet);
}

static inline __m256 high_half(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

void harness_to_bf16(const float *x, int64_t dim, int64_t r0, int64_t r1, uint16_t *out, int64_t k_pad,
                     double *stats) {
  double norm_max = 0.0, err_max = 0.0;
  for (int64_t r = r0; r < r1; r++) {
    const float *row = x + r * dim;
    uint16_t *dst = out + r * k_pad;
    __m512d norm = _mm512_setzero_pd(), err = _mm512_setzero_pd();
    for (int64_t c = 0; c < k_pad; c += 16) {
      int64_t left = dim - c;
      __mmask16 mask = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
      __m512 v = _mm512_maskz_loadu_ps(mask, row + c); /* zeros past dim: the padding */
      __m512i h = to_bf16_bits(v);
      __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
      __m512 residual = _mm512_sub_ps(v, back); /* exact in fp32 (or inf where bf16 overflowed) */
      __m512d v0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), v1 = _mm512_cvtps_pd(high_half(v));
      __m512d e0 = _mm512_cvtps_pd(_mm512_castps512_ps256(residual)), e1 = _mm512_cvtps_pd(high_half(residual));
      norm = _mm512_fmadd_pd(v1, v1, _mm512_fmadd_pd(v0, v0, norm));
      err = _mm512_fmadd_pd(e1, e1, _mm512_fmadd_pd(e0, e0, err));
      _mm256_storeu_si256((__m256i *)(dst + c), _mm512_cvtepi32_epi16(h));
    }
    double n2 = _mm512_reduce_add_pd(norm), e2 = _mm512_reduce_add_pd(err);
    if (n2 > norm_max || n2 != n2) norm_max = n2; /* a NaN stays: no later comparison replaces it */
    if (e2 > err_max || e2 != e2) err_max = e2;
  }
  stats[0] = norm_max;
  stats[1] = err_max;
}
