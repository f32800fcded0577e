"""Small built-in word lists for demo data (Faker is far too slow at millions of rows)."""

from __future__ import annotations

FIRST_NAMES = (
    "Sofía", "Martina", "Valentina", "Catalina", "Camila", "Lucía", "Julieta", "Florencia", "Agustina",
    "Micaela", "Carolina", "Paula", "Mariana", "Victoria", "Josefina", "Milagros", "Rocío", "Belén",
    "Natalia", "Gabriela", "Laura", "Daniela", "Andrea", "Silvia", "Verónica", "Claudia", "Romina",
    "Mateo", "Santiago", "Benjamín", "Joaquín", "Tomás", "Lucas", "Martín", "Nicolás", "Facundo",
    "Gonzalo", "Agustín", "Juan", "Pablo", "Diego", "Federico", "Matías", "Sebastián", "Alejandro",
    "Ignacio", "Ezequiel", "Franco", "Lautaro", "Emiliano", "Rodrigo", "Hernán", "Marcelo", "Gustavo",
    "Ricardo", "Fernando", "Sergio", "Jorge", "Leandro", "Maximiliano",
)  # fmt: skip

LAST_NAMES = (
    "González", "Rodríguez", "Gómez", "Fernández", "López", "Díaz", "Martínez", "Pérez", "García",
    "Sánchez", "Romero", "Sosa", "Álvarez", "Torres", "Ruiz", "Ramírez", "Flores", "Acosta", "Benítez",
    "Medina", "Suárez", "Herrera", "Aguirre", "Pereyra", "Gutiérrez", "Giménez", "Molina", "Silva",
    "Castro", "Rojas", "Ortiz", "Núñez", "Luna", "Juárez", "Cabrera", "Ríos", "Ferreyra", "Godoy",
    "Morales", "Domínguez", "Moreno", "Peralta", "Vega", "Carrizo", "Quiroga", "Castillo", "Ledesma",
    "Muñoz", "Ojeda", "Ponce", "Vera", "Vázquez", "Villalba", "Cardozo", "Navarro", "Ramos", "Arias",
    "Coronel", "Córdoba", "Figueroa",
)  # fmt: skip

EMAIL_DOMAINS = (
    "gmail.com", "gmail.com", "gmail.com", "gmail.com", "hotmail.com", "hotmail.com", "yahoo.com.ar",
    "outlook.com", "live.com.ar", "icloud.com",
)  # fmt: skip

# Tenant names: "<first> <second>" (a real-estate developer), made unique by the generator.
TENANT_FIRST = (
    "Grupo", "Desarrollos", "Inversiones", "Constructora", "Urbana", "Altos", "Torres", "Estudio",
    "Proyectos", "Inmobiliaria", "Norte", "Sur", "Plaza", "Puerto", "Bosque", "Terrazas",
)  # fmt: skip
TENANT_SECOND = (
    "Alvear", "Libertador", "Palermo", "Belgrano", "Nordelta", "Pilar", "Rosedal", "Costanera",
    "del Plata", "Recoleta", "Caballito", "Núñez", "Olivos", "San Isidro", "Tigre", "Cañitas",
    "Urquiza", "Devoto", "Colegiales", "Saavedra", "Córdoba", "Rosario", "Mendoza", "Patagonia",
    "Andes", "Pampa", "Río", "Atlántico", "Sierras", "Delta",
)  # fmt: skip

# Offer names: "<kind> <place>".
OFFER_KINDS = (
    "Torre", "Residencias", "Edificio", "Lofts", "Complejo", "Barrio", "Condominio", "Terrazas",
    "Jardines", "Vistas",
)  # fmt: skip
OFFER_PLACES = (
    ("Palermo", "CABA"), ("Belgrano", "CABA"), ("Núñez", "CABA"), ("Caballito", "CABA"),
    ("Villa Urquiza", "CABA"), ("Recoleta", "CABA"), ("Puerto Madero", "CABA"), ("Colegiales", "CABA"),
    ("Nordelta", "Tigre"), ("Pilar", "Pilar"), ("Olivos", "Vicente López"), ("San Isidro", "San Isidro"),
    ("Nueva Córdoba", "Córdoba"), ("Fisherton", "Rosario"), ("Chacras de Coria", "Mendoza"),
    ("La Plata Centro", "La Plata"), ("Yerba Buena", "Tucumán"), ("Canning", "Ezeiza"),
)  # fmt: skip

TIMEZONES = (
    # Mostly Buenos Aires, a few others: per-tenant days must not assume one zone.
    ("America/Argentina/Buenos_Aires", 80),
    ("America/Montevideo", 6),
    ("America/Santiago", 5),
    ("America/Bogota", 3),
    ("America/Mexico_City", 3),
    ("Europe/Madrid", 2),
    ("UTC", 1),
)

DISQUALIFICATION = (
    # (category, weight, reason shown to operators)
    ("NO_RESPONSE", 30, "No respondió a los mensajes."),
    ("NOT_INTERESTED", 22, "Dijo que ya no está buscando."),
    ("PRICE_TOO_HIGH", 16, "El presupuesto no alcanza."),
    ("WRONG_ZONE", 10, "Busca en otra zona."),
    ("WRONG_TYPOLOGY", 8, "Busca otra tipología."),
    ("PRICE_TOO_LOW", 3, "Busca algo de mayor categoría."),
    ("MISSING_AMENITY", 3, "Necesita cochera / amenities."),
    ("DUPLICATE", 5, "Consulta duplicada."),
    ("OTHER", 3, "Otro motivo."),
)

ZONES = ("Palermo", "Belgrano", "Núñez", "Caballito", "Nordelta", "Pilar", "Olivos", "Recoleta")
TIMINGS = ("inmediato", "1-3 meses", "3-6 meses", "6-12 meses", "más de un año")
PURPOSES = ("Vivienda", "Vivienda", "Inversión")
