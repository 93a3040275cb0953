"""Clinical analytics: the table-driven NEWS2 scorer and ECG analysis. Imports nothing of the other vitalgate packages."""
