#if canImport(Glibc)
import Glibc
#endif

/// This core's measured float32 peak, GFLOP/s: the faster of 12 independent SIMD16 fused multiply-add
/// chains and our GEMM on a cache-resident 192^3 problem (a floor, should the chains ever be compiled
/// worse than the micro-kernel). The denominator of model FLOPs utilisation (MFU): measured, since the same
/// flags mean different peaks (Zen 4 runs AVX-512 on 256-bit units, Zen 5 on 512-bit ones).
public func measuredPeakGFLOPS(seconds: Double = 0.02) -> Double {
    max(fmaChainGFLOPS(seconds: seconds / 2), cachedGemmGFLOPS(seconds: seconds / 2))
}

public func cachedGemmGFLOPS(seconds: Double) -> Double {
    let n = 192
    let a = UnsafeMutablePointer<Float>.allocate(capacity: n * n), b = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
    let c = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
    defer { a.deallocate(); b.deallocate(); c.deallocate() }
    for i in 0..<(n * n) { a[i] = Float(i % 7) * 0.1; b[i] = Float(i % 5) * 0.1; c[i] = 0 }
    var clock = timespec(), best = 0.0
    func now() -> Double { clock_gettime(CLOCK_MONOTONIC, &clock); return Double(clock.tv_sec) + Double(clock.tv_nsec) * 1e-9 }
    let end = now() + seconds
    repeat {
        let start = now()
        for _ in 0..<4 { gemm(.none, .none, m: n, n: n, k: n, a: a, b: b, c: c) }
        best = max(best, 4 * 2 * Double(n * n * n) / (now() - start) / 1e9)
    } while now() < end
    return best
}

/// The faster of 12 chains of 16 lanes (one AVX-512 register each) and 12 chains of 8 lanes (one AVX2
/// register each): on an AVX2-only core the 16-lane chains need 24 of its 16 registers and spill,
/// which read 67.6 GFLOP/s on a Zen core where GEMM reaches 86.5.
public func fmaChainGFLOPS(seconds: Double) -> Double {
    let operands = UnsafeMutablePointer<Float>.allocate(capacity: 32)
    defer { operands.deallocate() }
    for i in 0..<32 { operands[i] = 1e-7 * Float(i) }
    var best = 0.0, sink = Float(0)
    let rounds = 20_000
    var clock = timespec()
    func now() -> Double { clock_gettime(CLOCK_MONOTONIC, &clock); return Double(clock.tv_sec) + Double(clock.tv_nsec) * 1e-9 }
    for lanes in [16, 8] {
        let end = now() + seconds / 2
        repeat {
            let start = now()
            sink += lanes == 16 ? fmaChains(SIMD16<Float>.self, operands, rounds: rounds) : fmaChains(SIMD8<Float>.self, operands, rounds: rounds)
            best = max(best, Double(rounds * 12 * lanes * 2) / (now() - start) / 1e9)
        } while now() < end
    }
    // Keep the result observable so the loop is not removed.
    return sink.isNaN ? 0 : best
}

// 12 independent FMA chains of one width. The operands are loaded inside the loop, as a GEMM
// micro-kernel's are: with loop-invariant constants the compiler folded them and split the chains so
// that this measured 78 GFLOP/s on a core where GEMM reaches 110 (the peak was understated by a third).
@inline(never)
func fmaChains<V: SIMD>(_: V.Type, _ operands: UnsafePointer<Float>, rounds: Int) -> Float where V.Scalar == Float {
    var c0 = V(), c1 = V(), c2 = V(), c3 = V(), c4 = V(), c5 = V(), c6 = V(), c7 = V(), c8 = V(), c9 = V(), c10 = V(), c11 = V()
    let raw = UnsafeRawPointer(operands)
    for _ in 0..<rounds {
        let a = raw.loadUnaligned(as: V.self), b = raw.loadUnaligned(fromByteOffset: 64, as: V.self)
        c0 = c0.addingProduct(a, b); c1 = c1.addingProduct(a, b); c2 = c2.addingProduct(a, b)
        c3 = c3.addingProduct(a, b); c4 = c4.addingProduct(a, b); c5 = c5.addingProduct(a, b)
        c6 = c6.addingProduct(a, b); c7 = c7.addingProduct(a, b); c8 = c8.addingProduct(a, b)
        c9 = c9.addingProduct(a, b); c10 = c10.addingProduct(a, b); c11 = c11.addingProduct(a, b)
    }
    return (((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11))).sum()
}
