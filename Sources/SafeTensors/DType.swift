/// Element types of the safetensors format. Raw values are the exact strings used in the header.
///
/// Covers the reference implementation's whole-byte types, so files using them open here even when
/// this module cannot convert that type to `Float` or `Int64` (`withRawBytes` still reads them).
/// The packed sub-byte types (F4, F6_*) are not supported and fail at open as an unknown dtype.
public enum DType: String, CaseIterable, Sendable {
    case f64 = "F64"
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case f8e5m2 = "F8_E5M2"
    case f8e4m3 = "F8_E4M3"
    case f8e8m0 = "F8_E8M0"
    /// Complex: two F32 (real, imaginary).
    case c64 = "C64"
    case i64 = "I64"
    case i32 = "I32"
    case i16 = "I16"
    case i8 = "I8"
    case u64 = "U64"
    case u32 = "U32"
    case u16 = "U16"
    case u8 = "U8"
    case bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64, .c64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .f8e5m2, .f8e4m3, .f8e8m0, .i8, .u8, .bool: return 1
        }
    }

    /// Whether `floats(_:)` can return tensors of this type.
    public var isConvertibleToFloat: Bool {
        switch self {
        case .f64, .f32, .f16, .bf16: return true
        default: return false
        }
    }

    /// Whether `int64s(_:)` can return tensors of this type without losing values.
    /// U64 is excluded because values above `Int64.max` would not fit.
    public var isConvertibleToInt64: Bool {
        switch self {
        case .i64, .i32, .i16, .i8, .u32, .u16, .u8, .bool: return true
        default: return false
        }
    }
}
