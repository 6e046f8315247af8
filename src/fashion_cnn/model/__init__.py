"""The model as data: layer types, the layer list and its Keras builder, costs, the .keras file."""
