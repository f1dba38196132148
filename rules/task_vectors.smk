# task_vectors: rules land with the method (see its issue). When enabled, a method
# appends its model folders to MODEL_VARIANTS.
