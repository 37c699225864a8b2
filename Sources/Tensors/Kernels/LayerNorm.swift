// LayerNorm over the last dimension of x [rows, cols]:
//   y = (x - mean) * rstd * weight (+ bias),  rstd = 1 / sqrt(var + eps), var biased (as PyTorch).
// Forward caches mean[rows] and rstd[rows]; backward recomputes the normalized x from them:
//   dx += rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)),  dw += dy*xhat,  db += dy

public let layerNormEpsilon: Float = 1e-5

public func layerNormForward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                             into y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                             rstd: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    let invCols = 1 / Float(cols)
    for r in 0..<rows {
        let xr = x + r * cols, yr = y + r * cols
        var sums = SIMD16<Float>()
        var j = 0
        while j + 16 <= cols { sums += load16(xr + j); j += 16 }
        var s = horizontalSum(sums)
        while j < cols { s += xr[j]; j += 1 }
        let m = s * invCols
        // Second pass on centred values: no cancellation when the mean is large.
        let mv = SIMD16<Float>(repeating: m)
        var sq = SIMD16<Float>()
        j = 0
        while j + 16 <= cols { let d = load16(xr + j) - mv; sq = sq.addingProduct(d, d); j += 16 }
        var v = horizontalSum(sq)
        while j < cols { let d = xr[j] - m; v += d * d; j += 1 }
        let rs = 1 / (v * invCols + layerNormEpsilon).squareRoot()
        mean[r] = m
        rstd[r] = rs
        let rsv = SIMD16<Float>(repeating: rs)
        j = 0
        while j + 16 <= cols {
            var out = (load16(xr + j) - mv) * rsv * load16(weight + j)
            if let bias { out += load16(bias + j) }
            store16(yr + j, out)
            j += 16
        }
        while j < cols {
            yr[j] = (xr[j] - m) * rs * weight[j] + (bias?[j] ?? 0)
            j += 1
        }
    }
}

public func layerNormBackward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                              mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                              dx: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?,
                              dbias: UnsafeMutablePointer<Float>?, rows: Int, cols: Int) {
    let invCols = 1 / Float(cols)
    for r in 0..<rows {
        let xr = x + r * cols, dyr = dy + r * cols, dxr = dx + r * cols
        let m = mean[r], rs = rstd[r]
        let mv = SIMD16<Float>(repeating: m), rsv = SIMD16<Float>(repeating: rs)
        var sumWdy = SIMD16<Float>(), sumWdyXhat = SIMD16<Float>()
        var j = 0
        while j + 16 <= cols {
            let xhat = (load16(xr + j) - mv) * rsv
            let wdy = load16(weight + j) * load16(dyr + j)
            sumWdy += wdy
            sumWdyXhat = sumWdyXhat.addingProduct(wdy, xhat)
            j += 16
        }
        var meanWdy = horizontalSum(sumWdy), meanWdyXhat = horizontalSum(sumWdyXhat)
        while j < cols {
            let xhat = (xr[j] - m) * rs
            let wdy = weight[j] * dyr[j]
            meanWdy += wdy
            meanWdyXhat += wdy * xhat
            j += 1
        }
        meanWdy *= invCols
        meanWdyXhat *= invCols
        let a = SIMD16<Float>(repeating: meanWdy), b = SIMD16<Float>(repeating: meanWdyXhat)
        j = 0
        while j + 16 <= cols {
            let xhat = (load16(xr + j) - mv) * rsv
            let g = load16(dyr + j)
            if let dweight { store16(dweight + j, load16(dweight + j).addingProduct(g, xhat)) }
            if let dbias { store16(dbias + j, load16(dbias + j) + g) }
            let inner: SIMD16<Float> = load16(weight + j) * g - a - xhat * b
            store16(dxr + j, load16(dxr + j).addingProduct(rsv, inner))
            j += 16
        }
        while j < cols {
            let xhat = (xr[j] - m) * rs
            dweight?[j] += dyr[j] * xhat
            dbias?[j] += dyr[j]
            dxr[j] += rs * (weight[j] * dyr[j] - meanWdy - xhat * meanWdyXhat)
            j += 1
        }
    }
}

/// The weight and bias gradients alone (dweight += Σ dy·x̂, dbias += Σ dy over rows), from the mean and
/// rstd the forward kept: the second half of a backward split into input and weight passes.
public func layerNormWeightGradients(_ x: UnsafePointer<Float>, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                     dy: UnsafePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                     dbias: UnsafeMutablePointer<Float>?, rows: Int, cols: Int) {
    for r in 0..<rows {
        let xr = x + r * cols, dyr = dy + r * cols
        let m = mean[r], rs = rstd[r]
        let mv = SIMD16<Float>(repeating: m), rsv = SIMD16<Float>(repeating: rs)
        var j = 0
        while j + 16 <= cols {
            let g = load16(dyr + j)
            store16(dweight + j, load16(dweight + j).addingProduct(g, (load16(xr + j) - mv) * rsv))
            if let dbias { store16(dbias + j, load16(dbias + j) + g) }
            j += 16
        }
        while j < cols {
            dweight[j] += dyr[j] * (xr[j] - m) * rs
            dbias?[j] += dyr[j]
            j += 1
        }
    }
}
