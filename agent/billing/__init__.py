"""Billing: OCPI 2.2.1 tariffs as data (`tariff`), the cost engine (`pricing`), the
`evedge tariff` commands (`tariff_cmd`), and signed OCMF charge records (`ocmf`, `chain`,
`keys`)."""
