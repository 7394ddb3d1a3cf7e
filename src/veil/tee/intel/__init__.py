"""Intel DCAP: SGX and TDX quotes, PCK certificates, collateral and TCB evaluation."""

from veil.tee.intel.collateral import Collateral, CollateralError
from veil.tee.intel.quote import Quote, QuoteFormatError, SgxReportBody, TdReportBody
from veil.tee.intel.verify import IntelVerified, QuoteVerificationError, verify_quote

__all__ = [
    "Collateral",
    "CollateralError",
    "IntelVerified",
    "Quote",
    "QuoteFormatError",
    "QuoteVerificationError",
    "SgxReportBody",
    "TdReportBody",
    "verify_quote",
]
