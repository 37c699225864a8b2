#if canImport(Glibc)
import Glibc
#endif

/// This core's measured float32 peak, GFLOP/s: the faster of 12 independent SIMD16 fused multiply-add
/// chains and our GEMM on a cache-resident 192^3 problem (the compiler may split a SIMD16 chain into
/// 256-bit halves, which on a core with 512-bit FMA units shows half the peak; the GEMM's micro-kernel
/// keeps 512-bit registers). The denominator of model FLOPs utilisation (MFU): measured, since the same
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

public func fmaChainGFLOPS(seconds: Double) -> Double {
    var accumulators = (0..<12).map { SIMD16<Float>(repeating: Float($0) * 1e-3) }
    let a = SIMD16<Float>(repeating: 0.999_999), b = SIMD16<Float>(repeating: 1e-7)
    var best = 0.0
    let rounds = 20_000
    var clock = timespec()
    func now() -> Double { clock_gettime(CLOCK_MONOTONIC, &clock); return Double(clock.tv_sec) + Double(clock.tv_nsec) * 1e-9 }
    let end = now() + seconds
    repeat {
        let start = now()
        accumulators.withUnsafeMutableBufferPointer { acc in
            var (c0, c1, c2, c3, c4, c5) = (acc[0], acc[1], acc[2], acc[3], acc[4], acc[5])
            var (c6, c7, c8, c9, c10, c11) = (acc[6], acc[7], acc[8], acc[9], acc[10], acc[11])
            for _ in 0..<rounds {
                c0 = c0.addingProduct(a, b); c1 = c1.addingProduct(a, b); c2 = c2.addingProduct(a, b)
                c3 = c3.addingProduct(a, b); c4 = c4.addingProduct(a, b); c5 = c5.addingProduct(a, b)
                c6 = c6.addingProduct(a, b); c7 = c7.addingProduct(a, b); c8 = c8.addingProduct(a, b)
                c9 = c9.addingProduct(a, b); c10 = c10.addingProduct(a, b); c11 = c11.addingProduct(a, b)
            }
            (acc[0], acc[1], acc[2], acc[3], acc[4], acc[5]) = (c0, c1, c2, c3, c4, c5)
            (acc[6], acc[7], acc[8], acc[9], acc[10], acc[11]) = (c6, c7, c8, c9, c10, c11)
        }
        let elapsed = now() - start
        best = max(best, Double(rounds * 12 * 16 * 2) / elapsed / 1e9)
    } while now() < end
    // Keep the result observable so the loop is not removed.
    if accumulators.reduce(0, { $0 + $1.sum() }).isNaN { return 0 }
    return best
}
