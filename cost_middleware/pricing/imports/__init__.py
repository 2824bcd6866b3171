"""``prices import``: other catalogs' prices turned into our rows, planned, guarded and written.

One module per source format (``catalog``, ``litellm``, ``genai_prices``), each turning decoded
source data into a :class:`~cost_middleware.pricing.imports.conversion.Conversion`; ``sources``
reads a SOURCE and picks the format; ``providers`` maps their provider names to ours; ``plan``
compares the rows with the table (the diff) and writes them; ``guards`` refuses a suspicious
import; ``diff`` renders a plan. Import from the submodules: this package imports nothing.
"""
