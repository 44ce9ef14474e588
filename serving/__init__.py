"""Loading and querying pushed SavedModels the way TensorFlow Serving does."""
