"""Dataset adapters: each reads one dataset's snapshot into raw examples.

`base.DatasetAdapter` is the contract. ExampleGen picks an adapter by the
config's `data.adapter` (see `components.example_gen.get_adapter`).
"""
