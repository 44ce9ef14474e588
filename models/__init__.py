"""The multi-task model: preprocessing, trunks, heads, builder and export."""
