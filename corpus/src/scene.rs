//! What a synthetic picture shows and how it is said: one or two coloured shapes in named places
//! on a plain background, drawn from small vocabularies (8 colours, 4 shapes, 2 sizes, 9 places or
//! 4 relations, 3 backgrounds) so that every caption is fully determined by the picture and a
//! model has to bind colour, shape, size and place to retrieve the right one.

/// Object colours. None is a background colour, so every object stays visible.
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [215, 35, 35]),
    ("orange", [245, 140, 20]),
    ("yellow", [240, 215, 40]),
    ("green", [40, 165, 60]),
    ("blue", [40, 80, 215]),
    ("purple", [135, 50, 175]),
    ("pink", [245, 135, 190]),
    ("brown", [115, 70, 35]),
];

/// Background colours.
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("white", [238, 238, 238]),
    ("gray", [150, 150, 150]),
    ("black", [22, 22, 22]),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
}

pub const SHAPES: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross];

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
        }
    }
}

/// Places of a lone object: a 3x3 grid, named as people would say it.
pub const PLACES: [&str; 9] = [
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the middle",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
];

/// How the first of two objects sits relative to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

pub const RELATIONS: [Relation; 4] = [
    Relation::Above,
    Relation::Below,
    Relation::LeftOf,
    Relation::RightOf,
];

impl Relation {
    pub fn words(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
        }
    }
}

/// One drawable object: what it is and where, in fractions of the image side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    pub colour: usize,
    pub shape: Shape,
    pub large: bool,
    /// Centre, in [0, 1] of the image width and height.
    pub cx: f32,
    pub cy: f32,
    /// Half the extent, as a fraction of the image side.
    pub radius: f32,
    /// Small per-image shifts of the colour, so that no two pictures are pixel-identical.
    pub tint: [i16; 3],
}

impl Object {
    fn phrase(&self) -> String {
        let size = if self.large { "large" } else { "small" };
        format!("a {size} {} {}", COLOURS[self.colour].0, self.shape.name())
    }

    /// Same colour, shape and size: such a pair could not be told apart by its caption.
    fn same_kind(&self, other: &Object) -> bool {
        self.colour == other.colour && self.shape == other.shape && self.large == other.large
    }
}

/// What the caption says about the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One object at `PLACES[place]`.
    Alone { place: usize },
    /// Two objects: the first `relation` the second.
    Pair { relation: Relation },
}

/// One smooth brightness wave across the picture: `amplitude * cos(2 pi (fx x + fy y) + phase)`
/// with x and y in [0, 1] of the image side.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Wave {
    pub fx: f32,
    pub fy: f32,
    pub phase: f32,
    pub amplitude: f32,
}

/// Largest amplitude of one shading wave, in 8-bit levels.
pub const SHADE: f32 = 18.0;

#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub background: usize,
    pub background_tint: [i16; 3],
    /// Gentle light across the background, different in every picture as in photographs: the
    /// background keeps its colour name, and distinct pictures get distinct perceptual hashes
    /// (on flat backgrounds, pictures with a small object in the same place hash alike, and
    /// ingest's near-duplicate dedupe would drop them).
    pub shading: [Wave; 2],
    pub layout: Layout,
    pub objects: Vec<Object>,
}

/// Share of two-object scenes in the default corpus; the rest show a lone object.
pub const PAIR_SHARE: f64 = 0.7;

/// Ways of saying the same scene; duplicates of an image get another one than the original.
pub const TEMPLATES: usize = 3;

impl Scene {
    /// A random scene: a lone object, or with probability `pair_share` (the corpus default is
    /// [`PAIR_SHARE`]) two objects in a relation. `object_scale` multiplies the objects' sizes
    /// (1: radii of 7-16% of the side); objects are kept inside the picture.
    pub fn sample(rng: &mut fastrand::Rng, pair_share: f64, object_scale: f32) -> Scene {
        let background = rng.usize(..BACKGROUNDS.len());
        let background_tint = tint(rng, 10);
        let shading = [wave(rng), wave(rng)];
        if rng.f32() < (1.0 - pair_share) as f32 {
            let place = rng.usize(..PLACES.len());
            let (col, row) = ((place % 3) as f32, (place / 3) as f32);
            let mut object = sample_object(rng, 0.08 * object_scale, 0.16 * object_scale);
            object.cx = inside(0.22 + 0.28 * col + jitter(rng, 0.03), object.radius);
            object.cy = inside(0.22 + 0.28 * row + jitter(rng, 0.03), object.radius);
            Scene {
                background,
                background_tint,
                shading,
                layout: Layout::Alone { place },
                objects: vec![object],
            }
        } else {
            let relation = RELATIONS[rng.usize(..RELATIONS.len())];
            let (small, large) = (0.07 * object_scale, 0.14 * object_scale);
            let mut a = sample_object(rng, small, large);
            let mut b = loop {
                let b = sample_object(rng, small, large);
                if !b.same_kind(&a) {
                    break b;
                }
            };
            // The first object on one side of the middle, the second on the other, each
            // free along the other axis.
            let (near, far) = (0.27 + jitter(rng, 0.04), 0.73 + jitter(rng, 0.04));
            let (free_a, free_b) = (0.5 + jitter(rng, 0.22), 0.5 + jitter(rng, 0.22));
            let ((ax, ay), (bx, by)) = match relation {
                Relation::Above => ((free_a, near), (free_b, far)),
                Relation::Below => ((free_a, far), (free_b, near)),
                Relation::LeftOf => ((near, free_a), (far, free_b)),
                Relation::RightOf => ((far, free_a), (near, free_b)),
            };
            (a.cx, a.cy) = (inside(ax, a.radius), inside(ay, a.radius));
            (b.cx, b.cy) = (inside(bx, b.radius), inside(by, b.radius));
            Scene {
                background,
                background_tint,
                shading,
                layout: Layout::Pair { relation },
                objects: vec![a, b],
            }
        }
    }

    /// The caption, in one of `TEMPLATES` phrasings.
    pub fn caption(&self, template: usize) -> String {
        let background = BACKGROUNDS[self.background].0;
        let what = match self.layout {
            Layout::Alone { place } => format!("{} {}", self.objects[0].phrase(), PLACES[place]),
            Layout::Pair { relation } => format!(
                "{} {} {}",
                self.objects[0].phrase(),
                relation.words(),
                self.objects[1].phrase()
            ),
        };
        match template % TEMPLATES {
            0 => format!("{what} on a {background} background"),
            1 => format!("a {background} picture with {what}"),
            _ => format!("{what}, {background} background"),
        }
    }
}

/// An object of random kind at the centre; `small`/`large` are the radii of the two sizes.
fn sample_object(rng: &mut fastrand::Rng, small: f32, large: f32) -> Object {
    let is_large = rng.bool();
    let base = if is_large { large } else { small };
    Object {
        colour: rng.usize(..COLOURS.len()),
        shape: SHAPES[rng.usize(..SHAPES.len())],
        large: is_large,
        cx: 0.5,
        cy: 0.5,
        radius: base * (1.0 + jitter(rng, 0.12)),
        tint: tint(rng, 14),
    }
}

/// A shading wave of 0.5 to 3 cycles across the picture in a random direction.
fn wave(rng: &mut fastrand::Rng) -> Wave {
    let cycles = 0.5 + 2.5 * rng.f32();
    let angle = rng.f32() * std::f32::consts::TAU;
    Wave {
        fx: cycles * angle.cos(),
        fy: cycles * angle.sin(),
        phase: rng.f32() * std::f32::consts::TAU,
        amplitude: SHADE * (0.5 + 0.5 * rng.f32()),
    }
}

/// A centre coordinate moved, where needed, so that an object of `radius` stays inside.
fn inside(c: f32, radius: f32) -> f32 {
    c.clamp(radius.min(0.5), (1.0 - radius).max(0.5))
}

/// Uniform in [-amount, amount].
fn jitter(rng: &mut fastrand::Rng, amount: f32) -> f32 {
    (rng.f32() * 2.0 - 1.0) * amount
}

fn tint(rng: &mut fastrand::Rng, amount: i16) -> [i16; 3] {
    [0; 3].map(|_: i16| rng.i16(-amount..=amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_name_every_attribute() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let scene = Scene::sample(&mut rng, PAIR_SHARE, 1.0);
            let caption = scene.caption(0);
            for o in &scene.objects {
                assert!(caption.contains(COLOURS[o.colour].0), "{caption}");
                assert!(caption.contains(o.shape.name()), "{caption}");
                assert!(o.cx > 0.0 && o.cx < 1.0 && o.cy > 0.0 && o.cy < 1.0);
            }
            assert!(caption.contains(BACKGROUNDS[scene.background].0));
            assert_ne!(scene.caption(0), scene.caption(1));
        }
    }

    #[test]
    fn scaled_objects_grow_and_stay_inside() {
        let mut rng = fastrand::Rng::with_seed(8);
        for _ in 0..500 {
            let scene = Scene::sample(&mut rng, PAIR_SHARE, 1.8);
            for o in &scene.objects {
                assert!(o.radius >= 0.07 * 1.8 * 0.88, "{o:?}");
                for c in [o.cx, o.cy] {
                    assert!(c - o.radius >= -1e-6 && c + o.radius <= 1.0 + 1e-6, "{o:?}");
                }
            }
        }
    }
}
