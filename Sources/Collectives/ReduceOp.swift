/// How values from different ranks combine. `average` sums, then every rank scales by 1/worldSize the
/// same way, so results stay bitwise identical.
public enum ReduceOp: String, Sendable, CaseIterable, Codable {
    case sum, average, max

    /// dst[i] = dst[i] (op) src[i]; float addition and max are commutative, so which side is "dst"
    /// does not change the bits.
    @inline(__always)
    func combine(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count n: Int) {
        var i = 0
        switch self {
        case .sum, .average:
            while i + 16 <= n {
                let a = UnsafeRawPointer(dst + i).loadUnaligned(as: SIMD16<Float>.self)
                let b = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self)
                UnsafeMutableRawPointer(dst + i).storeBytes(of: a + b, as: SIMD16<Float>.self)
                i += 16
            }
            while i < n { dst[i] += src[i]; i += 1 }
        case .max:
            while i + 16 <= n {
                let a = UnsafeRawPointer(dst + i).loadUnaligned(as: SIMD16<Float>.self)
                let b = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self)
                // A compare and blend: pointwiseMax of two computed vectors is compiled to a lane loop.
                UnsafeMutableRawPointer(dst + i).storeBytes(of: a.replacing(with: b, where: a .< b), as: SIMD16<Float>.self)
                i += 16
            }
            while i < n { dst[i] = Swift.max(dst[i], src[i]); i += 1 }
        }
    }

    /// The final step after the reduction (1/N for average).
    func finish(_ buffer: UnsafeMutableBufferPointer<Float>, worldSize: Int) {
        guard self == .average, worldSize > 1 else { return }
        let scale = 1 / Float(worldSize)
        for i in buffer.indices { buffer[i] *= scale }
    }
}
