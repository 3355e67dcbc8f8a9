"""EAN-13 barcodes: check digit and the 95-module bar pattern (GS1 General Specifications)."""

from __future__ import annotations

import numpy as np

# Left-hand odd-parity (L) codes; R = bitwise complement of L; G = R reversed.
_L = ("0001101", "0011001", "0010011", "0111101", "0100011",
      "0110001", "0101111", "0111011", "0110111", "0001011")
_R = tuple("".join("1" if b == "0" else "0" for b in code) for code in _L)
_G = tuple(code[::-1] for code in _R)
# Parity of the six left-hand digits, selected by the (implicit) first digit.
_PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
           "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")
START, MIDDLE, END = "101", "01010", "101"
N_MODULES = 95


class BarcodeError(ValueError):
    """Raised for a malformed EAN-13 digit string."""


def check_digit(first12: str) -> int:
    """GS1 check digit for 12 data digits: weights 1, 3, 1, 3, ... from the left."""
    if len(first12) != 12 or not first12.isdigit():
        raise BarcodeError(f"expected 12 digits, got {first12!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


def complete(first12: str) -> str:
    """The full 13-digit code: data digits plus check digit."""
    return first12 + str(check_digit(first12))


def modules(code: str) -> np.ndarray:
    """95 bar modules (1 = bar, 0 = space) of a valid 13-digit EAN code, uint8."""
    if len(code) != 13 or not code.isdigit():
        raise BarcodeError(f"expected 13 digits, got {code!r}")
    if check_digit(code[:12]) != int(code[12]):
        raise BarcodeError(f"bad check digit in {code!r}")
    parity = _PARITY[int(code[0])]
    left = "".join((_L if p == "L" else _G)[int(d)] for p, d in zip(parity, code[1:7], strict=True))
    right = "".join(_R[int(d)] for d in code[7:13])
    bits = START + left + MIDDLE + right + END
    return np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")


def decode(bits: np.ndarray) -> str:
    """Inverse of :func:`modules` (used to test the pattern); raises on an invalid pattern."""
    s = "".join(str(int(b)) for b in bits)
    if len(s) != N_MODULES or s[:3] != START or s[45:50] != MIDDLE or s[92:] != END:
        raise BarcodeError("guard patterns not found")
    left = [s[3 + 7 * i: 10 + 7 * i] for i in range(6)]
    right = [s[50 + 7 * i: 57 + 7 * i] for i in range(6)]
    digits, parity = [], []
    for sym in left:
        if sym in _L:
            digits.append(_L.index(sym))
            parity.append("L")
        elif sym in _G:
            digits.append(_G.index(sym))
            parity.append("G")
        else:
            raise BarcodeError(f"unknown left symbol {sym}")
    first = _PARITY.index("".join(parity))
    tail = []
    for sym in right:
        if sym not in _R:
            raise BarcodeError(f"unknown right symbol {sym}")
        tail.append(_R.index(sym))
    code = str(first) + "".join(map(str, digits + tail))
    if check_digit(code[:12]) != int(code[12]):
        raise BarcodeError("check digit mismatch")
    return code
